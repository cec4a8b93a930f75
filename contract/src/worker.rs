//! What the operator and the workers (api-server, indexer) must agree on: the environment a
//! worker is configured through, and the Lease each worker holds to report its health.

use std::fmt;

/// Environment variable names read by the workers (each also a `clap` flag) and set by the
/// operator on their Deployments.
pub mod env {
    // Which pipeline and pod a worker belongs to (downward API; set by hand when run locally).
    pub const PIPELINE_NAME: &str = "MP_PIPELINE_NAME";
    pub const PIPELINE_NAMESPACE: &str = "MP_PIPELINE_NAMESPACE";
    /// The uid of the MessagePipeline object: a pipeline deleted and created again under the
    /// same name is another object, and its old workers (still stopping) are not its own.
    pub const PIPELINE_UID: &str = "MP_PIPELINE_UID";
    pub const POD_NAME: &str = "POD_NAME";

    // Kafka.
    pub const KAFKA_BOOTSTRAP_SERVERS: &str = "KAFKA_BOOTSTRAP_SERVERS";
    pub const KAFKA_TOPIC: &str = "KAFKA_TOPIC";
    pub const KAFKA_DLQ_TOPIC: &str = "KAFKA_DLQ_TOPIC";
    pub const KAFKA_CONSUMER_GROUP: &str = "KAFKA_CONSUMER_GROUP";
    pub const KAFKA_SECURITY_PROTOCOL: &str = "KAFKA_SECURITY_PROTOCOL";
    pub const KAFKA_SASL_MECHANISM: &str = "KAFKA_SASL_MECHANISM";
    pub const KAFKA_SASL_USERNAME: &str = "KAFKA_SASL_USERNAME";
    pub const KAFKA_SASL_PASSWORD: &str = "KAFKA_SASL_PASSWORD";
    pub const KAFKA_SSL_CA_LOCATION: &str = "KAFKA_SSL_CA_LOCATION";

    // MongoDB.
    pub const MONGODB_URI: &str = "MONGODB_URI";
    /// A CA file (PEM) the MongoDB connection trusts, besides what the URI says.
    pub const MONGODB_CA_FILE: &str = "MONGODB_CA_FILE";
    pub const MONGODB_DATABASE: &str = "MONGODB_DATABASE";
    pub const MONGODB_COLLECTION: &str = "MONGODB_COLLECTION";

    // Search engine.
    pub const ELASTICSEARCH_URL: &str = "ELASTICSEARCH_URL";
    pub const ELASTICSEARCH_USERNAME: &str = "ELASTICSEARCH_USERNAME";
    pub const ELASTICSEARCH_PASSWORD: &str = "ELASTICSEARCH_PASSWORD";
    pub const ELASTICSEARCH_CA_CERT: &str = "ELASTICSEARCH_CA_CERT";
    pub const ELASTICSEARCH_ALIAS: &str = "ELASTICSEARCH_ALIAS";

    // api-server.
    pub const API_KEYS_FILE: &str = "API_KEYS_FILE";
    pub const HTTP_ADDR: &str = "HTTP_ADDR";
    /// Where the api-server serves `/metrics`, apart from the API: its samples name tenants.
    pub const METRICS_ADDR: &str = "METRICS_ADDR";
    /// Per-tenant limits of each api-server process ([`super::tenant_limits`]).
    pub const TENANT_RATE: &str = "API_TENANT_RATE";
    pub const TENANT_BURST: &str = "API_TENANT_BURST";
    pub const TENANT_CONCURRENCY: &str = "API_TENANT_CONCURRENCY";
    pub const TENANT_OVERRIDES: &str = "API_TENANT_OVERRIDES";

    // indexer.
    pub const BATCH_MAX_COUNT: &str = "INDEXER_BATCH_MAX_COUNT";
    pub const BATCH_MAX_BYTES: &str = "INDEXER_BATCH_MAX_BYTES";
    pub const BATCH_LINGER_MS: &str = "INDEXER_BATCH_LINGER_MS";
    pub const MAX_IN_FLIGHT: &str = "INDEXER_MAX_IN_FLIGHT";
    pub const RETRY_MAX_ATTEMPTS: &str = "INDEXER_RETRY_MAX_ATTEMPTS";
    pub const RETRY_BACKOFF_MS: &str = "INDEXER_RETRY_BACKOFF_MS";
    pub const BREAKER_FAILURE_THRESHOLD: &str = "INDEXER_BREAKER_FAILURE_THRESHOLD";
    pub const BREAKER_COOLDOWN_MS: &str = "INDEXER_BREAKER_COOLDOWN_MS";
    pub const TOMBSTONE_HORIZON_DAYS: &str = "INDEXER_TOMBSTONE_HORIZON_DAYS";
    pub const REQUEST_TIMEOUT_MS: &str = "INDEXER_REQUEST_TIMEOUT_MS";
    pub const PURGE_INTERVAL_SECONDS: &str = "INDEXER_PURGE_INTERVAL_SECONDS";
}

/// The api-server's per-tenant limits when nothing sets them (`spec.api.tenantLimits` has the
/// same defaults): per process, 0 turning a limit off.
pub mod tenant_limits {
    /// Requests per second of one tenant, sustained.
    pub const DEFAULT_TENANT_RATE: u32 = 500;
    /// Requests of one tenant at once above the rate.
    pub const DEFAULT_TENANT_BURST: u32 = 1000;
    /// Requests of one tenant in flight at once.
    pub const DEFAULT_TENANT_CONCURRENCY: u32 = 64;
}

/// The exit code of `indexer audit` (and `indexer rebuild`) that leaves divergent documents:
/// the command did its work and found what it reports, so the operator's Jobs do not retry it.
pub const EXIT_DIVERGED: u8 = 3;

/// A worker's role in the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Api,
    Indexer,
    /// `indexer rebuild` as the operator's Job runs it: one pod, no Deployment, its Lease
    /// carries the rebuild's progress (never counted as a worker).
    Rebuild,
    /// `indexer audit` as the operator's CronJob runs it: its Lease is the last audit's summary
    /// (never counted as a worker, kept until the next audit replaces it).
    Audit,
}

impl Role {
    /// The roles that run as Deployments.
    pub const ALL: [Self; 2] = [Self::Api, Self::Indexer];

    /// The value of [`lease::LABEL_ROLE`].
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Api => "api",
            Self::Indexer => "indexer",
            Self::Rebuild => "rebuild",
            Self::Audit => "audit",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Api, Self::Indexer, Self::Rebuild, Self::Audit]
            .into_iter()
            .find(|r| r.as_str() == s)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An indexer's circuit breaker without its data: what its Lease annotation
/// ([`lease::ANNOTATION_BREAKER`]), its metric label and the operator's status say. Ordered:
/// worse is greater.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BreakerState {
    /// Requests flow.
    Closed,
    /// After an outage: the next request is the probe.
    HalfOpen,
    /// No requests until the cooldown is over.
    Open,
}

impl BreakerState {
    /// Every state, best first.
    pub const ALL: [Self; 3] = [Self::Closed, Self::HalfOpen, Self::Open];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half-open",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|b| b.as_str() == s)
    }
}

impl fmt::Display for BreakerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Labels and annotations on worker Leases.
pub mod lease {
    /// Label: the MessagePipeline the worker belongs to.
    pub const LABEL_PIPELINE: &str = "messagepipeline.io/pipeline";
    /// Label: the uid of that MessagePipeline object (when the worker was given one).
    pub const LABEL_PIPELINE_UID: &str = "messagepipeline.io/pipeline-uid";
    /// Label: `api` or `indexer`.
    pub const LABEL_ROLE: &str = "messagepipeline.io/role";
    /// Annotation: `"true"` / `"false"`; changed only on transitions.
    pub const ANNOTATION_READY: &str = "messagepipeline.io/ready";
    /// Annotation: a [`super::BreakerState`] (`closed`, `open` or `half-open`); changed only on
    /// transitions.
    pub const ANNOTATION_BREAKER: &str = "messagepipeline.io/breaker";
    /// Annotation (api-server): the age of the oldest change MongoDB acknowledged that is not on
    /// Kafka yet, as a [`RelayBacklog`] bucket; changed only when the bucket does.
    pub const ANNOTATION_RELAY_BACKLOG: &str = "messagepipeline.io/relay-backlog";
    /// Annotation: the reason of a refusal the worker's clients met recently
    /// ([`crate::access::Refusal::reason`], `KafkaAuthenticationFailed`, ...); absent when none.
    pub const ANNOTATION_REFUSAL: &str = "messagepipeline.io/refusal";
    /// Annotation: that refusal as a log line (endpoint, cause, the client library's words),
    /// at most [`REFUSAL_MESSAGE_MAX`] bytes.
    pub const ANNOTATION_REFUSAL_MESSAGE: &str = "messagepipeline.io/refusal-message";
    pub const REFUSAL_MESSAGE_MAX: usize = 1024;

    /// How old the oldest change an api-server still owes Kafka is, in coarse buckets so the
    /// annotation (and the operator's reconcile) changes rarely. Ordered: worse is greater.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
    pub enum RelayBacklog {
        /// Nothing older than 10 s: the relay keeps up.
        Clear,
        Over10s,
        Over1m,
        Over10m,
    }

    impl RelayBacklog {
        /// Every bucket, best first (`as usize` is the index here).
        pub const ALL: [Self; 4] = [Self::Clear, Self::Over10s, Self::Over1m, Self::Over10m];

        /// The bucket of the oldest unpublished change, `age_ms` old (0 when there is none).
        pub const fn of_age_millis(age_ms: i64) -> Self {
            match age_ms {
                ..10_000 => Self::Clear,
                10_000..60_000 => Self::Over10s,
                60_000..600_000 => Self::Over1m,
                _ => Self::Over10m,
            }
        }

        pub const fn as_str(self) -> &'static str {
            match self {
                Self::Clear => "clear",
                Self::Over10s => "over-10s",
                Self::Over1m => "over-1m",
                Self::Over10m => "over-10m",
            }
        }

        pub fn parse(s: &str) -> Option<Self> {
            Self::ALL.into_iter().find(|b| b.as_str() == s)
        }
    }
    /// The rebuild Job's progress: its generation, phase (`Scanning`, `CatchingUp`,
    /// `AwaitingSwap`, `Swapped`, `Done`) and documents done / about how many there are.
    pub const ANNOTATION_REBUILD_GENERATION: &str = "messagepipeline.io/rebuild-generation";
    pub const ANNOTATION_REBUILD_PHASE: &str = "messagepipeline.io/rebuild-phase";
    pub const ANNOTATION_REBUILD_DONE: &str = "messagepipeline.io/rebuild-done";
    pub const ANNOTATION_REBUILD_TOTAL: &str = "messagepipeline.io/rebuild-total";
    /// The audit's summary (JSON), on the Lease `<pipeline>-audit` the audit Job writes when it
    /// ends.
    pub const ANNOTATION_AUDIT_SUMMARY: &str = "messagepipeline.io/audit-summary";
    /// How often a worker renews its Lease.
    pub const RENEW_SECONDS: u32 = 10;
    /// The Lease's `leaseDurationSeconds`: a Lease not renewed for this long is expired.
    pub const DURATION_SECONDS: u32 = 30;
}

/// The name of the Lease a worker holds: `<pipeline>-<role>-<pod>`.
pub fn lease_name(pipeline: &str, role: Role, pod: &str) -> String {
    format!("{pipeline}-{}-{pod}", role.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_names_follow_the_contract() {
        assert_eq!(
            lease_name("prod", Role::Indexer, "indexer-7d9f-x2"),
            "prod-indexer-indexer-7d9f-x2"
        );
        assert_eq!(lease_name("prod", Role::Api, "api-0"), "prod-api-api-0");
    }

    #[test]
    fn roles_and_breaker_states_round_trip_through_their_words() {
        for role in Role::ALL {
            assert_eq!(Role::parse(role.as_str()), Some(role));
        }
        let words: Vec<&str> = BreakerState::ALL.iter().map(|b| b.as_str()).collect();
        assert_eq!(words, ["closed", "half-open", "open"]);
        for state in BreakerState::ALL {
            assert_eq!(BreakerState::parse(&state.to_string()), Some(state));
        }
        assert!(BreakerState::Closed < BreakerState::HalfOpen);
        assert!(BreakerState::HalfOpen < BreakerState::Open);
        assert_eq!(BreakerState::parse("ajar"), None);
        assert_eq!(Role::parse("relay"), None);
        assert_eq!(Role::parse("rebuild"), Some(Role::Rebuild));
    }

    #[test]
    fn relay_backlog_buckets_by_age_and_round_trips() {
        use lease::RelayBacklog::{self, *};
        for (age, bucket) in [
            (0, Clear),
            (9_999, Clear),
            (10_000, Over10s),
            (59_999, Over10s),
            (60_000, Over1m),
            (599_999, Over1m),
            (600_000, Over10m),
            (i64::MAX, Over10m),
        ] {
            assert_eq!(RelayBacklog::of_age_millis(age), bucket, "{age} ms");
            assert_eq!(RelayBacklog::parse(bucket.as_str()), Some(bucket));
        }
        assert!(Clear < Over10s && Over1m < Over10m);
        assert_eq!(RelayBacklog::parse("stuck"), None);
    }
}

//! Command line and environment: every flag also reads an env var (the names shared with the
//! operator come from `pipeline_contract::worker::env`).

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser};
use pipeline_contract::kafka::DEFAULT_TOPIC;
use pipeline_contract::kafka_client::Connection;
pub use pipeline_contract::mongodb_client::MongoArgs;
use pipeline_contract::search::{DEFAULT_ALIAS, DEFAULT_TOMBSTONE_HORIZON_DAYS};
use pipeline_contract::search_client::SearchAccess;
use pipeline_contract::worker::env;

use crate::fairness::{self, Fairness};
use crate::validate::Limits;
pub use pipeline_contract::worker::tenant_limits::{
    DEFAULT_TENANT_BURST, DEFAULT_TENANT_CONCURRENCY, DEFAULT_TENANT_RATE,
};

#[derive(Debug, Clone, Parser)]
#[command(
    name = "api-server",
    about = "Messages on MongoDB per tenant, relayed to Kafka without loss, and searched"
)]
pub struct Config {
    /// Address of the API, `/live`, `/ready` and `/openapi.json`.
    #[arg(long, env = env::HTTP_ADDR, default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,

    /// Address of `/metrics`, apart from the API: its samples name tenants, which the API's
    /// clients must not learn from each other (scrapers reach this port; clients need not).
    #[arg(long, env = env::METRICS_ADDR, default_value = "0.0.0.0:9090")]
    pub metrics_addr: SocketAddr,

    /// Async worker threads; 0 (the default) means one per CPU the process may use (cgroup
    /// quotas included). Where the server shares few cores with busy neighbours, 1 avoids
    /// waking threads back and forth and serves more (see docs/benchmarks.md).
    #[arg(long, env = "API_WORKER_THREADS", default_value_t = 0)]
    pub worker_threads: usize,

    /// Most creates one `insert_many` writes (group commit: creates arriving together are
    /// written together, each answered with its own outcome).
    #[arg(long, env = "API_INSERT_BATCH_MAX", default_value_t = NonZeroUsize::new(256).unwrap())]
    pub insert_batch_max: NonZeroUsize,

    /// `insert_many` commands in flight at once; creates arriving meanwhile wait for a free one
    /// and go together. No timer: a create that finds one free goes at once. One served the
    /// most on the rig (docs/benchmarks.md, `make bench-api`: 1.72 of raw `insert_one`, 2: 1.59, 4: 1.40).
    #[arg(long, env = "API_INSERT_BATCHES_IN_FLIGHT", default_value_t = NonZeroUsize::new(1).unwrap())]
    pub insert_batches_in_flight: NonZeroUsize,

    #[command(flatten)]
    pub auth: AuthArgs,

    #[command(flatten)]
    pub mongodb: MongoArgs,

    #[command(flatten)]
    pub kafka: KafkaArgs,

    #[command(flatten)]
    pub relay: RelayArgs,

    #[command(flatten)]
    pub search: SearchArgs,

    #[command(flatten)]
    pub limits: LimitArgs,

    #[command(flatten)]
    pub tenants: TenantLimitArgs,

    /// Deleted messages stay as hidden tombstones this many days, then are purged. Keep it equal
    /// to the indexer's horizon.
    #[arg(long, env = env::TOMBSTONE_HORIZON_DAYS, default_value_t = DEFAULT_TOMBSTONE_HORIZON_DAYS)]
    pub tombstone_horizon_days: u32,

    /// Seconds between tombstone purges.
    #[arg(long, env = "API_PURGE_INTERVAL_SECONDS", default_value_t = 3600)]
    pub purge_interval_seconds: u64,

    /// Seconds a tombstone past the horizon stays in MongoDB after a purge first found the index
    /// without it: longer than the engine remembers a deleted version (`index.gc_deletes`, 60 s
    /// by default), so that a message made again under the same id is not outranked.
    #[arg(long, env = "API_PURGE_INDEX_GRACE_SECONDS", default_value_t = 300)]
    pub purge_index_grace_seconds: u64,
}

#[derive(Debug, Clone, Args)]
pub struct AuthArgs {
    /// The API keys file (YAML list of `{name, tenant, sha256}`); required unless
    /// `--insecure-tenant-header` is given.
    #[arg(long, env = env::API_KEYS_FILE, required_unless_present = "insecure_tenant_header")]
    pub api_keys_file: Option<PathBuf>,

    /// LOCAL DEMOS ONLY: no authentication; the tenant is whatever the `X-Tenant-Id` header
    /// says. Anyone who can reach the port can read and change every tenant's messages.
    #[arg(
        long,
        env = "API_INSECURE_TENANT_HEADER",
        conflicts_with = "api_keys_file"
    )]
    pub insecure_tenant_header: bool,
}

#[derive(Debug, Clone, Args)]
pub struct KafkaArgs {
    /// Where Kafka is and how to authenticate.
    #[command(flatten)]
    pub connection: Connection,
    /// The events topic (created by the operator; auto-creation stays off).
    #[arg(long, env = env::KAFKA_TOPIC, default_value = DEFAULT_TOPIC)]
    pub topic: String,
}

#[derive(Debug, Clone, Args)]
pub struct RelayArgs {
    /// How far behind a watermark a recovery or adoption scan starts, in milliseconds: a margin
    /// for writes whose outcome the writer could not know.
    #[arg(long, env = "RELAY_OVERLAP_MS", default_value_t = 10_000)]
    pub relay_overlap_ms: u64,
    /// A peer api-server whose relay heartbeat has not moved for this long (milliseconds, on
    /// this process's clock) is presumed dead, and its unpublished changes are adopted: read
    /// back from MongoDB and published by this process. A process stops taking writes when its
    /// own heartbeat is older than half of it. At least 3000 (the heartbeat is every second).
    #[arg(long, env = "RELAY_REPLICA_EXPIRY_MS", default_value_t = 30_000,
          value_parser = clap::value_parser!(u64).range(3_000..))]
    pub relay_replica_expiry_ms: u64,
    /// This process's name among its peers (a restarted process with the same name adopts its
    /// predecessor's changes at once); the pod name in Kubernetes (downward API), the host
    /// name when unset.
    #[arg(long, env = env::POD_NAME)]
    pub pod_name: Option<String>,
    /// Most unpublished changes held in memory; beyond it the relay forgets them and reads them
    /// back from MongoDB once Kafka keeps up (memory stays bounded through a long outage).
    #[arg(long, env = "RELAY_MAX_PENDING", default_value_t = 20_000)]
    pub relay_max_pending: usize,
    /// How long librdkafka tries to deliver one record before the relay retries it itself.
    #[arg(long, env = "RELAY_MESSAGE_TIMEOUT_MS", default_value_t = 30_000)]
    pub relay_message_timeout_ms: u64,
    /// Documents read per page by a recovery scan.
    #[arg(long, env = "RELAY_SCAN_PAGE", default_value_t = 2000)]
    pub relay_scan_page: i64,
}

impl RelayArgs {
    pub fn overlap(&self) -> Duration {
        Duration::from_millis(self.relay_overlap_ms)
    }
    /// How long every delivery may fail before the relay replaces its producer: two delivery
    /// timeouts, and at least 10 s.
    pub fn stuck_producer_after(&self) -> Duration {
        Duration::from_millis(self.relay_message_timeout_ms.saturating_mul(2))
            .max(Duration::from_secs(10))
    }

    pub fn replica_expiry(&self) -> Duration {
        Duration::from_millis(self.relay_replica_expiry_ms)
    }
    /// `--pod-name`, else the host name, else `api-server`.
    pub fn pod(&self) -> String {
        self.pod_name
            .clone()
            .filter(|p| !p.is_empty())
            .or_else(|| {
                std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .ok()
                    .map(|h| h.trim().to_owned())
                    .filter(|h| !h.is_empty())
            })
            .unwrap_or_else(|| "api-server".to_owned())
    }
}

#[derive(Debug, Clone, Args)]
pub struct SearchArgs {
    /// The search engine's base URL; without it `/v1/search` answers 503.
    #[arg(long, env = env::ELASTICSEARCH_URL)]
    pub search_url: Option<String>,
    #[command(flatten)]
    pub access: SearchAccess,
    /// The alias searched (the indexer writes through it).
    #[arg(long, env = env::ELASTICSEARCH_ALIAS, default_value = DEFAULT_ALIAS)]
    pub search_alias: String,
    /// Timeout of one search request, in milliseconds.
    #[arg(long, env = "SEARCH_TIMEOUT_MS", default_value_t = 5_000)]
    pub search_timeout_ms: u64,
}

#[derive(Debug, Clone, Args)]
pub struct LimitArgs {
    /// Largest request body in bytes (413 beyond). The default (384 KiB) holds the largest
    /// valid content and metadata even when every character takes four bytes in UTF-8.
    #[arg(long, env = "API_MAX_BODY_BYTES", default_value_t = 384 * 1024)]
    pub max_body_bytes: usize,
    /// Longest `content`, in characters (Unicode scalar values).
    #[arg(long, env = "API_MAX_CONTENT_CHARS", default_value_t = Limits::default().max_content_chars)]
    pub max_content_chars: usize,
    /// Most keys in one metadata object (at every level).
    #[arg(long, env = "API_MAX_METADATA_KEYS", default_value_t = Limits::default().max_metadata_keys)]
    pub max_metadata_keys: usize,
    /// Deepest metadata nesting.
    #[arg(long, env = "API_MAX_METADATA_DEPTH", default_value_t = Limits::default().max_metadata_depth)]
    pub max_metadata_depth: usize,
    /// Largest metadata, in bytes of compact JSON.
    #[arg(long, env = "API_MAX_METADATA_BYTES", default_value_t = Limits::default().max_metadata_bytes)]
    pub max_metadata_bytes: usize,
}

impl LimitArgs {
    pub fn limits(&self) -> Limits {
        Limits {
            max_content_chars: self.max_content_chars,
            max_metadata_keys: self.max_metadata_keys,
            max_metadata_depth: self.max_metadata_depth,
            max_metadata_bytes: self.max_metadata_bytes,
        }
    }
}

/// Per-tenant limits of this process (each replica counts only what it serves). Over either,
/// a request is answered 429 with `Retry-After`.
#[derive(Debug, Clone, Args)]
pub struct TenantLimitArgs {
    /// Requests per second each tenant may make, sustained; 0: no rate limit.
    #[arg(long, env = env::TENANT_RATE, default_value_t = DEFAULT_TENANT_RATE)]
    pub tenant_rate: u32,
    /// Requests a tenant may make at once above its rate; 0: as many as the rate.
    #[arg(long, env = env::TENANT_BURST, default_value_t = DEFAULT_TENANT_BURST)]
    pub tenant_burst: u32,
    /// Requests of one tenant in flight at once; 0: no limit.
    #[arg(long, env = env::TENANT_CONCURRENCY, default_value_t = DEFAULT_TENANT_CONCURRENCY)]
    pub tenant_concurrency: u32,
    /// Tenants with limits of their own: a JSON array of `{"tenant", "requestsPerSecond",
    /// "burst", "concurrency"}`, each field left out taken from the flags above.
    #[arg(long, env = env::TENANT_OVERRIDES, default_value = "")]
    pub tenant_overrides: String,
}

impl TenantLimitArgs {
    /// The limits, or what is wrong with `--tenant-overrides`.
    pub fn fairness(&self) -> Result<Fairness, String> {
        let numbers = (self.tenant_rate, self.tenant_burst, self.tenant_concurrency);
        Ok(Fairness::new(
            fairness::limit(numbers.0, numbers.1, numbers.2),
            fairness::overrides(&self.tenant_overrides, numbers)?,
        ))
    }
}

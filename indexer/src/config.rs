//! Command line and environment: every flag also reads the env var the operator sets (names from
//! `pipeline_contract::worker::env`).

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use pipeline_contract::install::SearchEndpoint;
use pipeline_contract::kafka::{DEFAULT_CONSUMER_GROUP, DEFAULT_TOPIC};
use pipeline_contract::kafka_client::Connection;
use pipeline_contract::mongodb_client::MongoArgs;
use pipeline_contract::search::{DEFAULT_ALIAS, IndexLayout, InvalidAlias};
use pipeline_contract::search_client::{SearchAccess, SearchAccessError};
use pipeline_contract::worker::env;

use crate::batch::BatchLimits;
use crate::breaker::BreakerConfig;
use crate::retry::RetryPolicy;

#[derive(Debug, Parser)]
#[command(
    name = "indexer",
    about = "Applies message events from Kafka to Elasticsearch/OpenSearch"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Consume the topic and keep the search index up to date (what the Deployment runs).
    Run(RunArgs),
    /// Look into the dead-letter topic, or re-drive records from it.
    Dlq(DlqArgs),
    /// Compare the index with MongoDB document by document; with --repair, fix what differs.
    Audit(AuditArgs),
    /// Build the next generation of the index from MongoDB and the topic, then swap the alias.
    Rebuild(RebuildArgs),
}

#[derive(Debug, Clone, Args)]
pub struct RebuildArgs {
    /// The generation to build (`<alias>-00000N`); default: one above the alias's current.
    #[arg(long)]
    pub generation: Option<u32>,
    /// Delete the previous generation after the swap (default: keep it).
    #[arg(long)]
    pub delete_old: bool,
    /// The operator made the generation and swaps the alias (its Job): wait for the swap
    /// instead of making it, and leave old indices to the operator.
    #[arg(long, requires = "generation", conflicts_with = "delete_old")]
    pub operator_swaps: bool,
    #[command(flatten)]
    pub mongodb: MongoArgs,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// The search engine and the alias.
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Documents per MongoDB page and per bulk request.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub batch_size: u32,
    /// Timeout of each request to the search engine.
    #[arg(long, default_value_t = 30_000)]
    pub request_timeout_ms: u64,
}

#[derive(Debug, Clone, Args)]
pub struct AuditArgs {
    /// Re-index each divergent document from MongoDB (with its version as external version)
    /// and delete orphans; without it the audit only reports.
    #[arg(long)]
    pub repair: bool,
    #[command(flatten)]
    pub mongodb: MongoArgs,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// The indexer's consumer group, whose progress is the lag the audit waits out.
    #[arg(long, env = env::KAFKA_CONSUMER_GROUP, default_value = DEFAULT_CONSUMER_GROUP)]
    pub group: String,
    /// The search engine and the alias.
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Documents read from each side per page, and suspects re-checked together.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub page_size: u32,
    /// How long a re-check waits for the pipeline's lag to settle before it classifies anyway
    /// (and says so).
    #[arg(long, default_value_t = 120)]
    pub settle_timeout_secs: u64,
    /// Timeout of each request to the search engine.
    #[arg(long, default_value_t = 30_000)]
    pub request_timeout_ms: u64,
}

#[derive(Debug, Clone, Args)]
pub struct DlqArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(subcommand)]
    pub action: DlqAction,
}

#[derive(Debug, Clone, Subcommand)]
pub enum DlqAction {
    /// Count the dead letters by error class, with the oldest and newest of each.
    Inspect,
    /// Send selected dead letters back to the events topic, `dlq-redrive-count` incremented.
    Replay(ReplayArgs),
}

#[derive(Debug, Clone, Args)]
pub struct ReplayArgs {
    /// Only records of these error classes (repeatable); all classes when absent.
    #[arg(long = "class")]
    pub classes: Vec<String>,
    /// Only records whose DLQ offset is at least this.
    #[arg(long)]
    pub from_offset: Option<i64>,
    /// Only records whose DLQ offset is below this.
    #[arg(long)]
    pub to_offset: Option<i64>,
    /// Re-drive even records older than the tombstone horizon (they may resurrect a purged delete).
    #[arg(long)]
    pub force: bool,
    /// The tombstone horizon in days; records whose change is older are refused without --force.
    #[arg(long, env = env::TOMBSTONE_HORIZON_DAYS, default_value_t = pipeline_contract::search::DEFAULT_TOMBSTONE_HORIZON_DAYS)]
    pub horizon_days: u32,
    /// Show what would be re-driven, send nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// The search engine and the alias every command of the indexer works through.
#[derive(Debug, Clone, Args)]
pub struct EngineArgs {
    /// The search engine's base URL.
    #[arg(long, env = env::ELASTICSEARCH_URL)]
    pub search_url: String,
    #[command(flatten)]
    pub search: SearchAccess,
    /// The alias (installed by the operator): the write alias and every search's target.
    #[arg(long, env = env::ELASTICSEARCH_ALIAS, default_value = DEFAULT_ALIAS)]
    pub alias: String,
}

impl EngineArgs {
    pub fn layout(&self) -> Result<IndexLayout, InvalidAlias> {
        IndexLayout::new(self.alias.clone())
    }

    pub fn endpoint(&self) -> SearchEndpoint {
        self.search.endpoint(&self.search_url)
    }

    /// The HTTP client of every request, each timing out after `timeout_ms`.
    pub fn http_client(&self, timeout_ms: u64) -> Result<reqwest::Client, SearchAccessError> {
        self.search.http_client(Duration::from_millis(timeout_ms))
    }
}

#[derive(Debug, Clone, Args)]
pub struct KafkaArgs {
    /// Where Kafka is and how to authenticate.
    #[command(flatten)]
    pub connection: Connection,
    /// The events topic.
    #[arg(long, env = env::KAFKA_TOPIC, default_value = DEFAULT_TOPIC)]
    pub topic: String,
    /// The dead-letter topic; default `<topic>.dlq`.
    #[arg(long, env = env::KAFKA_DLQ_TOPIC)]
    pub dlq_topic: Option<String>,
}

impl KafkaArgs {
    pub fn dlq_topic(&self) -> String {
        self.dlq_topic
            .clone()
            .unwrap_or_else(|| pipeline_contract::dlq::default_dlq_topic(&self.topic))
    }
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// The consumer group.
    #[arg(long, env = env::KAFKA_CONSUMER_GROUP, default_value = DEFAULT_CONSUMER_GROUP)]
    pub group: String,
    /// The search engine and the alias.
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Most records in flight at once: each bulk request carries up to this divided by
    /// --max-in-flight, and the next request is gathered while they run.
    #[arg(long, env = env::BATCH_MAX_COUNT, default_value_t = 6000)]
    pub batch_max_count: usize,
    /// Most bytes in one bulk request.
    #[arg(long, env = env::BATCH_MAX_BYTES, default_value_t = 5 * 1024 * 1024)]
    pub batch_max_bytes: usize,
    /// Bulk requests in flight at once while the breaker is closed; a new one starts as soon as
    /// one finishes.
    #[arg(long, env = env::MAX_IN_FLIGHT, default_value_t = 4)]
    pub max_in_flight: usize,
    /// Longest wait for a batch to fill, in milliseconds.
    #[arg(long, env = env::BATCH_LINGER_MS, default_value_t = 200)]
    pub batch_linger_ms: u64,
    /// Attempts per item for item-level 429/5xx before it is dead-lettered.
    #[arg(long, env = env::RETRY_MAX_ATTEMPTS, default_value_t = 5)]
    pub retry_max_attempts: u32,
    /// First retry backoff ceiling in milliseconds (doubles per attempt, full jitter).
    #[arg(long, env = env::RETRY_BACKOFF_MS, default_value_t = 200)]
    pub retry_backoff_ms: u64,
    /// Whole-request failures in a row that open the circuit breaker.
    #[arg(long, env = env::BREAKER_FAILURE_THRESHOLD, default_value_t = 5)]
    pub breaker_failure_threshold: u32,
    /// How long the breaker stays open before one probe, in milliseconds.
    #[arg(long, env = env::BREAKER_COOLDOWN_MS, default_value_t = 30_000)]
    pub breaker_cooldown_ms: u64,
    /// Timeout of one bulk request, in milliseconds.
    #[arg(long, env = env::REQUEST_TIMEOUT_MS, default_value_t = 30_000)]
    pub request_timeout_ms: u64,
    /// Tombstones deleted longer ago than this are purged; must exceed topic retention + segment
    /// roll + worst lag, or a replayed old event could bring a deleted message back.
    #[arg(long, env = env::TOMBSTONE_HORIZON_DAYS, default_value_t = pipeline_contract::search::DEFAULT_TOMBSTONE_HORIZON_DAYS)]
    pub tombstone_horizon_days: u32,
    /// Seconds between tombstone purges.
    #[arg(long, env = env::PURGE_INTERVAL_SECONDS, default_value_t = 3600)]
    pub purge_interval_seconds: u64,
    /// Address of `/live`, `/ready` and `/metrics`.
    #[arg(long, env = env::HTTP_ADDR, default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,
}

impl RunArgs {
    pub fn batch(&self) -> BatchLimits {
        BatchLimits {
            max_count: self.batch_max_count,
            max_bytes: self.batch_max_bytes,
            linger: Duration::from_millis(self.batch_linger_ms),
        }
    }

    pub fn retry(&self) -> RetryPolicy {
        RetryPolicy {
            max_attempts: self.retry_max_attempts,
            base: Duration::from_millis(self.retry_backoff_ms),
            ..RetryPolicy::default()
        }
    }

    pub fn breaker(&self) -> BreakerConfig {
        BreakerConfig {
            failure_threshold: self.breaker_failure_threshold,
            cooldown: Duration::from_millis(self.breaker_cooldown_ms),
        }
    }
}

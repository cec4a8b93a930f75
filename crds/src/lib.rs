//! The MessagePipeline custom resource (`messagepipeline.io/v1alpha1`, short name `mp`, category
//! `messaging`): its spec with schema defaults and validation, the CEL transition rules for what
//! can never change in place, and its status, which only the operator writes.
//!
//! `crdgen` prints the CustomResourceDefinition; the committed copies
//! (`crds/messagepipeline.yaml` and the chart's) are checked against it by a test, so a change
//! here without regenerating them fails the build.

use std::collections::BTreeMap;

use kube::{CustomResource, KubeSchema};
use pipeline_contract::worker::Role;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use pipeline_contract::kafka::{DEFAULT_CONSUMER_GROUP, DEFAULT_RETENTION_MS, DEFAULT_TOPIC};
pub use pipeline_contract::search::{DEFAULT_ALIAS, DEFAULT_TOMBSTONE_HORIZON_DAYS};

/// The API group.
pub const GROUP: &str = "messagepipeline.io";
/// Annotation that stops reconciling a pipeline while it is `"true"`.
pub const PAUSED_ANNOTATION: &str = "messagepipeline.io/paused";
/// The operator's finalizer: external state (topics, template) is handled before the resource goes.
pub const FINALIZER: &str = "messagepipeline.io/finalizer";
/// The one field manager of everything the operator applies.
pub const FIELD_MANAGER: &str = "messagepipeline-operator";

/// Desired state of one message pipeline.
// Every `printcolumn(...)` repeats `type_`: clippy reads that as a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "messagepipeline.io",
    version = "v1alpha1",
    kind = "MessagePipeline",
    plural = "messagepipelines",
    shortname = "mp",
    category = "messaging",
    namespaced,
    status = "MessagePipelineStatus",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason"
    ),
    printcolumn(
        name = "API",
        type_ = "string",
        json_path = ".status.workers.api.summary",
        description = "ready/desired api-server replicas (live Leases)"
    ),
    printcolumn(
        name = "Indexer",
        type_ = "string",
        json_path = ".status.workers.indexer.summary",
        description = "ready/desired indexer replicas (live Leases)"
    ),
    printcolumn(
        name = "Lag",
        type_ = "integer",
        json_path = ".status.consumerLag",
        description = "records the consumer group is behind"
    ),
    printcolumn(
        name = "Breaker",
        type_ = "string",
        json_path = ".status.breaker",
        description = "worst circuit breaker state among indexers"
    ),
    printcolumn(
        name = "DLQ",
        type_ = "integer",
        json_path = ".status.dlqDepth",
        priority = 1
    ),
    printcolumn(
        name = "Relay",
        type_ = "string",
        json_path = ".status.relayBacklog",
        description = "age of the oldest change an api-server owes Kafka: clear (under 10 s), over-10s, over-1m, over-10m",
        priority = 1
    ),
    printcolumn(
        name = "InSync",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"IndexInSync\")].status",
        description = "whether the last audit found the index equal to MongoDB",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct MessagePipelineSpec {
    /// Container image holding both workers (`api-server` and `indexer`).
    #[x_kube(validation = Rule::new("self != ''").message("image must not be empty"))]
    pub image: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<String>,
    pub api: ApiSpec,
    #[serde(default)]
    pub indexer: IndexerSpec,
    pub mongodb: MongoSpec,
    pub kafka: KafkaSpec,
    pub elasticsearch: SearchSpec,
    /// What deleting the resource does to what the operator made outside Kubernetes: the topics,
    /// the index template and the index (every generation; it is derived from MongoDB, which
    /// is never touched). `Retain` (the default) leaves them, `Delete` removes them.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
    /// A periodic audit of the index against MongoDB (`indexer audit`, a CronJob); none when
    /// unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<AuditSpec>,
    /// Traces of the workers, sent to an OpenTelemetry collector over OTLP/HTTP; none when
    /// unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<TracingSpec>,
    /// Seconds a worker rollout may go without progress (the Deployments'
    /// `progressDeadlineSeconds`) before the pipeline says `RolloutStuck`; while it is under
    /// way, `Ready` is False with `RollingOut`.
    #[serde(default = "progress_deadline")]
    #[schemars(range(min = 10, max = 86_400))]
    pub progress_deadline_seconds: i32,
}

fn progress_deadline() -> i32 {
    600
}

/// Where the workers send their traces, and how many.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct TracingSpec {
    /// The collector's OTLP/HTTP base URL (e.g. `http://otel-collector.observability:4318`);
    /// the workers post to its `/v1/traces`.
    #[x_kube(validation = Rule::new("self.startsWith('http://') || self.startsWith('https://')").message("endpoint must be an http:// or https:// URL"))]
    pub endpoint: String,
    /// The share of new traces recorded, 0 to 1; a request that arrives with a sampled
    /// `traceparent` is always recorded (parent-based).
    #[serde(default = "all")]
    #[x_kube(validation = Rule::new("self >= 0.0 && self <= 1.0").message("samplingRatio must be between 0 and 1"))]
    pub sampling_ratio: f64,
    /// A Secret key holding the OTLP request headers (`key1=value1,key2=value2`, e.g. the
    /// collector's `authorization`), passed as `OTEL_EXPORTER_OTLP_HEADERS`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers_secret_ref: Option<SecretKeyRef>,
}

fn all() -> f64 {
    1.0
}

/// When and how the index is audited against MongoDB.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditSpec {
    /// A cron schedule (`minute hour day-of-month month day-of-week`, e.g. `17 3 * * *`), in
    /// `timeZone` or else the controller manager's.
    #[x_kube(validation = Rule::new("self.trim() != ''").message("schedule must not be empty"))]
    pub schedule: String,
    /// A time zone name of the IANA database (e.g. `Europe/Berlin`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
    /// Re-index each divergent document from MongoDB with its version as external version, and
    /// delete orphans; without it the audit only reports.
    #[serde(default)]
    pub repair: bool,
    /// No audit starts while true (one running goes on).
    #[serde(default)]
    pub suspend: bool,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DeletionPolicy {
    #[default]
    Retain,
    Delete,
}

/// A key of a Secret in the pipeline's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    #[schemars(length(min = 1))]
    pub name: String,
    #[schemars(length(min = 1))]
    pub key: String,
}

/// A Secret holding a username and a password.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CredentialsSecretRef {
    #[schemars(length(min = 1))]
    pub name: String,
    #[serde(default = "username_key")]
    pub username_key: String,
    #[serde(default = "password_key")]
    pub password_key: String,
}

fn username_key() -> String {
    "username".into()
}
fn password_key() -> String {
    "password".into()
}

/// Compute resources of a worker container (Kubernetes quantities).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Resources {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub requests: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub limits: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiSpec {
    #[serde(default = "two")]
    #[schemars(range(min = 0, max = 100))]
    pub replicas: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    pub auth: ApiAuth,
    /// What each tenant may ask of each api-server replica (the limits are per replica: with
    /// `replicas` replicas a tenant may get up to that many times them in all). Over a limit, a
    /// request is answered 429 with `Retry-After`.
    #[serde(default)]
    pub tenant_limits: TenantLimits,
}

/// Per-tenant limits of each api-server replica: a default, and tenants with their own.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantLimits {
    /// Requests per second of each tenant, sustained; 0: no rate limit.
    #[serde(default = "tenant_rate")]
    pub requests_per_second: u32,
    /// Requests a tenant may make at once above its rate; 0: as many as the rate.
    #[serde(default = "tenant_burst")]
    pub burst: u32,
    /// Requests of one tenant in flight at once; 0: no limit.
    #[serde(default = "tenant_concurrency")]
    pub concurrency: u32,
    /// Tenants with limits of their own; a field left out is the default's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    /// (A list keyed by `tenant`: the API server refuses a tenant named twice.)
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["tenant"], "maxItems" = 10000))]
    pub overrides: Vec<TenantLimitOverride>,
}

impl Default for TenantLimits {
    fn default() -> Self {
        Self {
            requests_per_second: tenant_rate(),
            burst: tenant_burst(),
            concurrency: tenant_concurrency(),
            overrides: Vec::new(),
        }
    }
}

/// One tenant's own limits.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantLimitOverride {
    /// The tenant, as the API keys file names it.
    #[schemars(length(min = 1, max = 128))]
    pub tenant: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_second: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
}

fn tenant_rate() -> u32 {
    pipeline_contract::worker::tenant_limits::DEFAULT_TENANT_RATE
}
fn tenant_burst() -> u32 {
    pipeline_contract::worker::tenant_limits::DEFAULT_TENANT_BURST
}
fn tenant_concurrency() -> u32 {
    pipeline_contract::worker::tenant_limits::DEFAULT_TENANT_CONCURRENCY
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiAuth {
    /// The Secret key holding the API keys file (YAML list of `{name, tenant, sha256}`).
    pub api_keys_secret_ref: SecretKeyRef,
}

fn two() -> i32 {
    2
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IndexerSpec {
    #[serde(default = "two")]
    #[schemars(range(min = 0, max = 100))]
    pub replicas: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    #[serde(default)]
    pub batch: BatchSpec,
    #[serde(default)]
    pub retry: RetrySpec,
    #[serde(default)]
    pub breaker: BreakerSpec,
    /// Days a deleted message's tombstone is kept; must exceed topic retention + worst lag.
    #[serde(default = "horizon")]
    #[schemars(range(min = 1, max = 3650))]
    pub tombstone_horizon_days: u32,
}

fn horizon() -> u32 {
    DEFAULT_TOMBSTONE_HORIZON_DAYS
}

impl Default for IndexerSpec {
    fn default() -> Self {
        Self {
            replicas: two(),
            resources: None,
            batch: BatchSpec::default(),
            retry: RetrySpec::default(),
            breaker: BreakerSpec::default(),
            tombstone_horizon_days: horizon(),
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BatchSpec {
    #[serde(default = "batch_count")]
    #[schemars(range(min = 1, max = 100_000))]
    pub max_count: u32,
    #[serde(default = "batch_bytes")]
    #[schemars(range(min = 1024, max = 104_857_600))]
    pub max_bytes: u32,
    #[serde(default = "linger")]
    #[schemars(range(min = 0, max = 60_000))]
    pub linger_ms: u32,
}

fn batch_count() -> u32 {
    6000
}
fn batch_bytes() -> u32 {
    5 * 1024 * 1024
}
fn linger() -> u32 {
    200
}

impl Default for BatchSpec {
    fn default() -> Self {
        Self {
            max_count: batch_count(),
            max_bytes: batch_bytes(),
            linger_ms: linger(),
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetrySpec {
    #[serde(default = "attempts")]
    #[schemars(range(min = 1, max = 100))]
    pub max_attempts: u32,
    #[serde(default = "backoff")]
    #[schemars(range(min = 1, max = 600_000))]
    pub backoff_ms: u32,
}

fn attempts() -> u32 {
    5
}
fn backoff() -> u32 {
    200
}

impl Default for RetrySpec {
    fn default() -> Self {
        Self {
            max_attempts: attempts(),
            backoff_ms: backoff(),
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BreakerSpec {
    #[serde(default = "threshold")]
    #[schemars(range(min = 1, max = 1000))]
    pub failure_threshold: u32,
    #[serde(default = "cooldown")]
    #[schemars(range(min = 100, max = 3_600_000))]
    pub cooldown_ms: u32,
}

fn threshold() -> u32 {
    5
}
fn cooldown() -> u32 {
    30_000
}

impl Default for BreakerSpec {
    fn default() -> Self {
        Self {
            failure_threshold: threshold(),
            cooldown_ms: cooldown(),
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MongoSpec {
    /// The Secret key holding the connection string (with the api-server's credentials, and
    /// `tls=true` where the server offers TLS).
    pub uri_secret_ref: SecretKeyRef,
    /// The Secret key holding the CA certificate (PEM) the server's certificate chains to,
    /// mounted as a file the connection trusts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretKeyRef>,
    /// The Secret key holding the connection string the rebuild Job reads MongoDB with (a
    /// read-only principal is enough); `uriSecretRef` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reader_uri_secret_ref: Option<SecretKeyRef>,
    #[serde(default = "database")]
    #[schemars(length(min = 1, max = 63))]
    pub database: String,
    #[serde(default = "collection")]
    #[schemars(length(min = 1, max = 120))]
    pub collection: String,
}

fn database() -> String {
    "message_pipeline".into()
}
fn collection() -> String {
    "messages".into()
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct KafkaSpec {
    #[schemars(length(min = 1))]
    pub bootstrap_servers: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<KafkaTls>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sasl: Option<KafkaSasl>,
    #[serde(default)]
    pub topic: TopicSpec,
    #[serde(default)]
    pub dlq: DlqSpec,
    #[serde(default = "group")]
    #[schemars(length(min = 1, max = 249))]
    pub consumer_group: String,
}

fn group() -> String {
    DEFAULT_CONSUMER_GROUP.into()
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KafkaTls {
    /// The Secret key holding the CA certificate (PEM) the brokers' certificates chain to.
    pub ca_secret_ref: SecretKeyRef,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KafkaSasl {
    /// `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    pub mechanism: SaslMechanism,
    /// The operator's principal (topics, lag), and each worker's unless given its own below.
    pub credentials_secret_ref: CredentialsSecretRef,
    /// The api-server's own principal (least privilege: write the events topic).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_credentials_secret_ref: Option<CredentialsSecretRef>,
    /// The indexer's own principal (read the events topic with its group, write the DLQ).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub indexer_credentials_secret_ref: Option<CredentialsSecretRef>,
}

impl KafkaSasl {
    /// The credentials the worker of `role` uses: its own, else the operator's (the rebuild
    /// Job reads the topic as the indexer does).
    pub fn credentials_of(&self, role: Role) -> &CredentialsSecretRef {
        match role {
            Role::Api => self.api_credentials_secret_ref.as_ref(),
            Role::Indexer | Role::Rebuild | Role::Audit => {
                self.indexer_credentials_secret_ref.as_ref()
            }
        }
        .unwrap_or(&self.credentials_secret_ref)
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum SaslMechanism {
    #[serde(rename = "PLAIN")]
    Plain,
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

impl SaslMechanism {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Plain => "PLAIN",
            Self::ScramSha256 => "SCRAM-SHA-256",
            Self::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

/// Kafka topic names: 1..=249 of `[a-zA-Z0-9._-]`.
const TOPIC_PATTERN: &str = "^[a-zA-Z0-9._-]{1,249}$";

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct TopicSpec {
    #[serde(default = "topic_name")]
    #[schemars(regex(pattern = TOPIC_PATTERN))]
    pub name: String,
    #[serde(default = "partitions")]
    #[schemars(range(min = 1, max = 10_000))]
    #[x_kube(validation = Rule::new("self >= oldSelf").message("partitions can never decrease: Kafka cannot remove partitions"))]
    pub partitions: i32,
    #[serde(default = "replication")]
    #[schemars(range(min = 1, max = 32))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("replicationFactor cannot change in place (it needs a partition reassignment)"))]
    pub replication_factor: i32,
    #[serde(default = "retention")]
    #[schemars(range(min = 60_000))]
    pub retention_ms: i64,
    /// Further topic settings, applied and kept (only alterable ones: see the README).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub config: BTreeMap<String, String>,
}

fn topic_name() -> String {
    DEFAULT_TOPIC.into()
}
fn partitions() -> i32 {
    6
}
fn replication() -> i32 {
    3
}
fn retention() -> i64 {
    DEFAULT_RETENTION_MS
}

impl Default for TopicSpec {
    fn default() -> Self {
        Self {
            name: topic_name(),
            partitions: partitions(),
            replication_factor: replication(),
            retention_ms: retention(),
            config: BTreeMap::new(),
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct DlqSpec {
    /// Default `<topic>.dlq`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = TOPIC_PATTERN))]
    pub name: Option<String>,
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 10_000))]
    #[x_kube(validation = Rule::new("self >= oldSelf").message("partitions can never decrease: Kafka cannot remove partitions"))]
    pub partitions: i32,
    /// Default 14 days: twice the events topic's, so a dead letter outlives its neighbours.
    #[serde(default = "dlq_retention")]
    #[schemars(range(min = 60_000))]
    pub retention_ms: i64,
}

fn one() -> i32 {
    1
}
fn dlq_retention() -> i64 {
    2 * DEFAULT_RETENTION_MS
}

impl Default for DlqSpec {
    fn default() -> Self {
        Self {
            name: None,
            partitions: one(),
            retention_ms: dlq_retention(),
        }
    }
}

impl SearchSpec {
    /// The credentials the worker of `role` uses: its own, else the operator's, else none (the
    /// rebuild Job writes documents as the indexer does).
    pub fn credentials_of(&self, role: Role) -> Option<&CredentialsSecretRef> {
        match role {
            Role::Api => self.api_credentials_secret_ref.as_ref(),
            Role::Indexer | Role::Rebuild | Role::Audit => {
                self.indexer_credentials_secret_ref.as_ref()
            }
        }
        .or(self.credentials_secret_ref.as_ref())
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SearchSpec {
    /// Base URL of Elasticsearch 8/9 or OpenSearch 2/3.
    #[schemars(regex(pattern = "^https?://"))]
    pub url: String,
    /// The operator's user (index template, first index, alias), and each worker's unless
    /// given its own below.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<CredentialsSecretRef>,
    /// The api-server's own user (least privilege: search through the alias).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_credentials_secret_ref: Option<CredentialsSecretRef>,
    /// The indexer's own user (bulk writes, the alias check, the tombstone purge).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub indexer_credentials_secret_ref: Option<CredentialsSecretRef>,
    /// The Secret key holding the CA certificate (PEM) of the engine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretKeyRef>,
    #[serde(default = "alias")]
    #[schemars(regex(pattern = "^[a-z0-9][a-z0-9_.-]{0,199}$"))]
    pub alias: String,
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 1024))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("shards are immutable: reindex into a new alias instead"))]
    pub shards: i32,
    #[serde(default = "one")]
    #[schemars(range(min = 0, max = 16))]
    pub replicas: i32,
    #[serde(default = "refresh")]
    #[schemars(regex(pattern = "^(-1|[0-9]+(ms|s|m))$"))]
    pub refresh_interval: String,
    /// The generation of the concrete index behind the alias (`<alias>-00000N`; 1 when unset).
    /// Raising it rebuilds the index from MongoDB beside the live one and swaps the alias to it
    /// (a Job, `status.index`); a value below the alias's current generation is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 999_999))]
    pub index_generation: Option<u32>,
    /// What happens to the previous generation after a rebuild: `Keep` (the default) or
    /// `Delete`.
    #[serde(default)]
    pub previous_index_policy: PreviousIndexPolicy,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum PreviousIndexPolicy {
    #[default]
    Keep,
    Delete,
}

fn alias() -> String {
    DEFAULT_ALIAS.into()
}
fn refresh() -> String {
    "1s".into()
}

impl KafkaSpec {
    /// The DLQ topic's name: as set, or `<topic>.dlq`.
    pub fn dlq_name(&self) -> String {
        self.dlq
            .name
            .clone()
            .unwrap_or_else(|| pipeline_contract::dlq::default_dlq_topic(&self.topic.name))
    }
}

/// Observed state, written by the operator only.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MessagePipelineStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default)]
    pub conditions: Vec<Condition>,
    #[serde(default)]
    pub workers: Workers,
    /// Records the consumer group is behind the topic's end, summed over partitions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer_lag: Option<i64>,
    /// Records in the dead-letter topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dlq_depth: Option<i64>,
    /// Worst circuit breaker state among live indexers: `closed`, `half-open` or `open`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub breaker: Option<String>,
    /// Worst relay backlog among live api-servers: the age of the oldest change MongoDB
    /// acknowledged that is not on Kafka yet (`clear`: under 10 s; `over-10s`, `over-1m`,
    /// `over-10m`), a dead replica's adopted changes included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay_backlog: Option<String>,
    /// The index behind the alias and the latest rebuild.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<IndexStatus>,
    /// The last audit of the index against MongoDB, as its Job reported it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<AuditStatus>,
    /// The clusters the pipeline uses, by identity, and what of theirs it made.
    #[serde(default, skip_serializing_if = "ExternalStatus::is_empty")]
    pub external: ExternalStatus,
}

/// Where the pipeline's state outside Kubernetes lives and what of it this pipeline made. Claims
/// are compared by these identities (two addresses of one cluster are one cluster), and
/// `deletionPolicy: Delete` removes only the topics listed here as created by this pipeline
/// (and only the index template and indices whose `_meta` names it).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExternalStatus {
    /// The Kafka cluster: its `cluster.id` as the brokers report it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka: Option<ClusterIdentity>,
    /// The search engine's cluster: its `cluster_uuid`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub search: Option<ClusterIdentity>,
    /// MongoDB's hosts as the URI names them (sorted, lower case; no credentials): the
    /// operator does not connect to MongoDB, so the hosts are all it can compare.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mongodb: Option<String>,
    /// The topics this pipeline has seen in place (a seen topic found missing was lost).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topics: Vec<TopicRecord>,
    /// Topics that were lost and made again, empty: the index may miss what they held.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topics_lost: Option<TopicsLost>,
}

impl ExternalStatus {
    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }
}

/// A cluster's identity, read at an address.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterIdentity {
    /// The address the spec gave when the identity was read (read again when it changes).
    pub address: String,
    pub id: String,
}

/// A topic of the pipeline.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TopicRecord {
    pub name: String,
    /// The operator created it for this pipeline (`deletionPolicy: Delete` removes it);
    /// false for a topic that existed before.
    pub created: bool,
}

/// Topics deleted outside the operator and created again.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TopicsLost {
    pub topics: Vec<String>,
    /// The index generation then: a rebuild to a higher one brings back what they held.
    pub index_generation: u32,
    /// RFC 3339.
    pub time: String,
}

/// The last audit.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditStatus {
    /// RFC 3339.
    pub start_time: String,
    pub completion_time: String,
    /// `InSync`, `Repaired`, `Diverged`, `Unsettled` or `Failed`.
    pub outcome: String,
    /// Documents read from MongoDB and from the index, tombstones included.
    pub mongodb_documents: u64,
    pub index_documents: u64,
    /// Divergent documents per class, after the re-check.
    pub found: DriftCounts,
    /// Of those, repaired.
    pub repaired: DriftCounts,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// Documents per class of divergence: in MongoDB but not in the index (`missing`), older in
/// the index (`stale`), deleted in MongoDB but visible in the index (`resurrected`), in the
/// index but not in MongoDB (`orphan`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DriftCounts {
    pub missing: u64,
    pub stale: u64,
    pub resurrected: u64,
    pub orphan: u64,
}

/// The index behind the alias.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IndexStatus {
    /// The generation the alias points at (the highest, while a swap is in flight).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u32>,
    /// The concrete indices the alias points at.
    #[serde(default)]
    pub indices: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rebuild: Option<RebuildStatus>,
}

/// The latest rebuild, as its Job and its Lease report it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RebuildStatus {
    pub generation: u32,
    /// `Pending`, `Scanning`, `CatchingUp`, `AwaitingSwap`, `Swapped`, `Done` or `Failed`.
    pub phase: String,
    /// MongoDB documents written to the new index, and about how many there are.
    #[serde(default)]
    pub documents_done: u64,
    #[serde(default)]
    pub documents_total: u64,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<String>,
    /// The indices the alias pointed at before the swap.
    #[serde(default)]
    pub previous: Vec<String>,
    #[serde(default)]
    pub message: String,
}

/// A condition, as Kubernetes conventions define it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// CamelCase reason.
    pub reason: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// RFC 3339; changes only when `status` does.
    pub last_transition_time: String,
}

/// Live workers per role, from their Leases.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Workers {
    #[serde(default)]
    pub api: RoleStatus,
    #[serde(default)]
    pub indexer: RoleStatus,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RoleStatus {
    /// Replicas the spec asks for.
    pub desired: i32,
    /// Workers holding an unexpired Lease.
    pub live: i32,
    /// Live workers whose Lease says ready.
    pub ready: i32,
    /// `ready/desired`, for `kubectl get`.
    pub summary: String,
    /// Live workers per breaker state (indexers only).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub breakers: BTreeMap<String, i32>,
}

/// Condition types.
pub mod condition {
    pub const READY: &str = "Ready";
    pub const TOPICS_READY: &str = "TopicsReady";
    pub const INDEX_TEMPLATE_READY: &str = "IndexTemplateReady";
    pub const API_SERVER_AVAILABLE: &str = "ApiServerAvailable";
    pub const INDEXER_AVAILABLE: &str = "IndexerAvailable";
    pub const INDEXER_HEALTHY: &str = "IndexerHealthy";
    pub const DEGRADED: &str = "Degraded";
    /// True while a rebuild runs; False with why not otherwise (complete, failed, refused).
    pub const REBUILDING: &str = "Rebuilding";
    /// True when the last audit left no divergent document; False, with the counts, when it
    /// found some and did not repair them; Unknown without an audit that finished.
    pub const INDEX_IN_SYNC: &str = "IndexInSync";
}

/// The CustomResourceDefinition as YAML, with a header saying where it comes from.
///
/// Keys are sorted at every level: whether `serde_json` keeps insertion order depends on the
/// features the rest of a build turns on, and the committed YAML must not.
pub fn crd_yaml() -> String {
    use kube::CustomResourceExt;
    let crd = serde_json::to_value(MessagePipeline::crd()).expect("a CRD always serializes");
    let yaml = serde_saphyr::to_string(&sorted(crd)).expect("JSON always serializes as YAML");
    format!("# Generated by `cargo run -p messagepipeline-crd --bin crdgen`; do not edit.\n{yaml}")
}

fn sorted(value: serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Object(map) => {
            let mut entries: Vec<(String, serde_json::Value)> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            serde_json::Value::Object(entries.into_iter().map(|(k, v)| (k, sorted(v))).collect())
        }
        serde_json::Value::Array(items) => {
            serde_json::Value::Array(items.into_iter().map(sorted).collect())
        }
        other => other,
    }
}

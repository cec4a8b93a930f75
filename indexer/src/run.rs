//! Wiring: builds the clients from the configuration, checks the alias, and runs the consume
//! loop next to the health server until shutdown.

use std::sync::Arc;
use std::time::Duration;

use pipeline_contract::install::SearchEndpoint;
use pipeline_contract::search::IndexLayout;
use rdkafka::consumer::StreamConsumer;
use tokio_util::sync::CancellationToken;

use crate::config::RunArgs;
use crate::dlq::DlqWriter;
use crate::metrics::Metrics;
use crate::pipeline::{Context, Pipeline, PipelineError, Settings};
use crate::sink::{AliasCheckError, SearchSink};

/// Why the indexer could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("invalid alias: {0}")]
    Alias(#[from] pipeline_contract::search::InvalidAlias),
    #[error("building the search client: {0}")]
    SearchClient(reqwest::Error),
    #[error(transparent)]
    AliasCheck(#[from] AliasCheckError),
    #[error("creating a Kafka client: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error("health server: {0}")]
    Server(std::io::Error),
}

/// The consumer as the loop needs it: manual commits, bounded queues, statistics for lag.
pub fn consumer(
    args: &RunArgs,
    metrics: Arc<Metrics>,
) -> Result<StreamConsumer<Context>, rdkafka::error::KafkaError> {
    let mut config = args.kafka.client_config();
    config
        .set("group.id", &args.group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        // librdkafka prefetches up to 64 MiB per consumer by default; a batch is at most a few MiB,
        // so 4 MiB of prefetch keeps the engine fed within the memory target.
        .set("queued.max.messages.kbytes", "4096")
        .set("queued.min.messages", "10000")
        // Once a partition's queue is full librdkafka waits this long before fetching it again
        // (default 1 s): that capped consumption at a few thousand records/s per partition.
        .set("fetch.queue.backoff.ms", "10")
        .set("fetch.max.bytes", "8388608")
        .set("statistics.interval.ms", "5000")
        .set("session.timeout.ms", "10000");
    config.create_with_context(Context::new(metrics, args.kafka.topic.clone()))
}

/// Runs the indexer until `shutdown` fires.
pub async fn run(
    args: RunArgs,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let layout = IndexLayout::new(args.alias.clone())?;
    let auth = args
        .search_username
        .clone()
        .map(|u| (u, args.search_password.clone().unwrap_or_default()));
    let sink = SearchSink::new(
        SearchEndpoint::new(&args.search_url),
        auth,
        layout,
        Duration::from_millis(args.request_timeout_ms),
    )
    .map_err(RunError::SearchClient)?;
    sink.check_alias().await?;
    let dlq = DlqWriter::new(args.kafka.client_config(), args.kafka.dlq_topic())?;
    let consumer = consumer(&args, metrics.clone())?;
    let settings = Settings {
        topic: args.kafka.topic.clone(),
        batch: args.batch(),
        retry: args.retry(),
        breaker: args.breaker(),
        max_in_flight: args.max_in_flight,
    };
    let purge = tokio::spawn(crate::purge::run(
        sink.clone(),
        args.tombstone_horizon_days,
        Duration::from_secs(args.purge_interval_seconds),
        shutdown.clone(),
    ));
    let lease = tokio::spawn(crate::lease::run(metrics.clone(), shutdown.clone()));
    let pipeline = Pipeline::new(consumer, sink, dlq, metrics.clone(), settings);
    let server = tokio::spawn(crate::server::serve(
        args.http_addr,
        metrics,
        shutdown.clone(),
    ));
    let result = pipeline.run(shutdown.clone()).await;
    shutdown.cancel();
    let _ = purge.await;
    let _ = lease.await;
    match server.await {
        Ok(Err(e)) => return Err(RunError::Server(e)),
        Err(e) => tracing::warn!(error = %e, "health server task failed"),
        Ok(Ok(())) => {}
    }
    Ok(result?)
}

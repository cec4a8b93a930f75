//! Wiring: builds the clients from the configuration, checks the alias, and runs the consume
//! loop next to the health server until shutdown.

use pipeline_contract::search_client::SearchAccessError;
use std::sync::Arc;
use std::time::Duration;

use pipeline_contract::search::IndexLayout;
use tokio_util::sync::CancellationToken;

use crate::config::RunArgs;
use crate::consumer::consumer;
use crate::dlq::DlqWriter;
use crate::metrics::Metrics;
use crate::pipeline::{Pipeline, PipelineError, Settings};
use crate::sink::{AliasCheckError, SearchSink};

/// Why the indexer could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("invalid alias: {0}")]
    Alias(#[from] pipeline_contract::search::InvalidAlias),
    #[error(transparent)]
    SearchClient(#[from] SearchAccessError),
    #[error(transparent)]
    AliasCheck(#[from] AliasCheckError),
    #[error("creating a Kafka client: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error("health server: {0}")]
    Server(std::io::Error),
}

/// Runs the indexer until `shutdown` fires.
pub async fn run(
    args: RunArgs,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let layout = IndexLayout::new(args.alias.clone())?;
    let http = args
        .search
        .http_client(Duration::from_millis(args.request_timeout_ms))?;
    let sink = SearchSink::new(args.search.endpoint(&args.search_url), http, layout);
    sink.check_alias().await?;
    let dlq = DlqWriter::new(
        args.kafka.connection.client_config(),
        args.kafka.dlq_topic(),
    )?;
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
    let pipeline = Pipeline::new(consumer, sink, dlq, metrics.clone(), settings);
    let lease = tokio::spawn(crate::lease::run(
        pipeline.gate(),
        metrics.clone(),
        shutdown.clone(),
    ));
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

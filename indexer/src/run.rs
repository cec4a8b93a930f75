//! Wiring: builds the clients from the configuration, checks the alias, and runs the consume
//! loop next to the health server until shutdown.

use pipeline_contract::search_client::SearchAccessError;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use pipeline_contract::kafka_client::Refusals;
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

/// How often a start the search engine refused checks the alias again.
const REFUSED_RETRY: Duration = Duration::from_secs(10);

/// Runs the indexer until `shutdown` fires. The health server and the Lease start first, so a
/// start the search engine refuses (credentials, CA, role) is visible on both while the
/// indexer keeps trying.
pub async fn run(
    args: RunArgs,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let layout = args.engine.layout()?;
    let http = args.engine.http_client(args.request_timeout_ms)?;
    let sink = SearchSink::new(args.engine.endpoint(), http, layout)
        .recording_refusals(metrics.refusals.clone());
    let gate = Arc::new(OnceLock::new());
    let lease = tokio::spawn(crate::lease::run(
        gate.clone(),
        metrics.clone(),
        shutdown.clone(),
    ));
    let server = tokio::spawn(crate::server::serve(
        args.http_addr,
        metrics.clone(),
        shutdown.clone(),
    ));
    let result = consume(&args, sink, metrics, &gate, &shutdown).await;
    shutdown.cancel();
    let _ = lease.await;
    match server.await {
        Ok(Err(e)) => return Err(RunError::Server(e)),
        Err(e) => tracing::warn!(error = %e, "health server task failed"),
        Ok(Ok(())) => {}
    }
    result
}

/// Checks the alias (again while the engine refuses), then runs the consume loop and the purge.
async fn consume(
    args: &RunArgs,
    sink: SearchSink,
    metrics: Arc<Metrics>,
    gate: &OnceLock<Arc<crate::gate::Gate>>,
    shutdown: &CancellationToken,
) -> Result<(), RunError> {
    loop {
        match sink.check_alias().await {
            Ok(()) => break,
            // The sink logged it; the Lease and /ready say it.
            Err(AliasCheckError::Refused { .. }) => tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                () = tokio::time::sleep(REFUSED_RETRY) => {}
            },
            Err(e) => return Err(e.into()),
        }
    }
    let dlq = DlqWriter::new(
        args.kafka.connection.client_config(),
        args.kafka.dlq_topic(),
        Refusals::into_log(
            &args.kafka.connection.bootstrap_servers,
            metrics.refusals.clone(),
        ),
    )?;
    let consumer = consumer(args, metrics.clone())?;
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
    let pipeline = Pipeline::new(consumer, sink, dlq, metrics, settings);
    let _ = gate.set(pipeline.gate());
    let result = pipeline.run(shutdown.clone()).await;
    shutdown.cancel();
    let _ = purge.await;
    Ok(result?)
}

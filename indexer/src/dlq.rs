//! Writing dead letters: the original key, value and headers plus the contract's DLQ headers,
//! produced with acks=all and awaited.
//!
//! A DLQ write that fails is retried until it succeeds or the indexer shuts down: the partition
//! stalls rather than skip a record (property 3). It never decides what is dead (`classify` does).

use std::time::Duration;

use pipeline_contract::dlq::DlqHeaders;
use pipeline_contract::kafka_client;
use pipeline_contract::kafka_client::Refusals;
use rdkafka::ClientConfig;
use rdkafka::producer::FutureProducer;
use tokio_util::sync::CancellationToken;

use crate::record::ConsumedRecord;
use crate::retry::RetryPolicy;

/// Writes dead letters to one topic.
pub struct DlqWriter {
    producer: FutureProducer<Refusals>,
    topic: String,
}

impl std::fmt::Debug for DlqWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DlqWriter")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

/// The DLQ write was abandoned because the indexer is shutting down; nothing was committed.
#[derive(Debug, thiserror::Error)]
#[error("DLQ write abandoned at shutdown")]
pub struct Abandoned;

/// Between attempts of a DLQ write: from 100 ms, doubling up to 5 s, with full jitter; no
/// bound on attempts (the partition waits: its offset must not pass an unwritten dead letter).
const BACKOFF: RetryPolicy = RetryPolicy {
    max_attempts: u32::MAX,
    base: Duration::from_millis(100),
    max: Duration::from_secs(5),
};

impl DlqWriter {
    /// A writer whose producer records the refusals it meets with `refusals`.
    pub fn new(
        config: ClientConfig,
        topic: String,
        refusals: Refusals,
    ) -> Result<Self, rdkafka::error::KafkaError> {
        let producer = kafka_client::idempotent(config)
            .set("message.timeout.ms", "30000")
            .create_with_context(refusals)?;
        Ok(Self { producer, topic })
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Writes one dead letter and waits for the broker's acknowledgement; retries (after
    /// [`BACKOFF`]) until it is acknowledged or `shutdown` fires.
    pub async fn write(
        &self,
        record: &ConsumedRecord,
        dlq: &DlqHeaders,
        shutdown: &CancellationToken,
    ) -> Result<(), Abandoned> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            // The DLQ headers of an earlier failure are replaced, not repeated.
            let kept = record
                .headers
                .iter()
                .filter(|(name, _)| !pipeline_contract::dlq::header::ALL.contains(&name.as_str()))
                .map(|(name, value)| (name.as_str(), value.as_deref()));
            let added = dlq.pairs();
            let added = added
                .iter()
                .map(|(name, value)| (*name, Some(value.as_bytes())));
            let headers = kafka_client::headers(kept.chain(added));
            let out = kafka_client::record(
                &self.topic,
                record.key.as_deref(),
                record.payload.as_deref(),
                headers,
            );
            match self.producer.send(out, Duration::from_secs(5)).await {
                Ok(_) => return Ok(()),
                Err((error, _)) => {
                    tracing::warn!(topic = %self.topic, %error, "DLQ write failed; the partition waits and retries");
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return Err(Abandoned),
                () = tokio::time::sleep(BACKOFF.delay(attempt, fastrand::f64())) => {}
            }
        }
    }
}

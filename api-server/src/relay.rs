//! The relay: publishes every acknowledged change to Kafka, loses none, and survives a Kafka
//! outage without failing a single API write (ARCHITECTURE.md, Relay; property 1).
//!
//! One task. It sends what the [`Outbox`] holds through an idempotent producer (`acks=all`),
//! marks records published only when Kafka acknowledged them, pages through MongoDB when the
//! outbox asks for a scan (at start from the persisted watermark minus the overlap, after a write
//! whose outcome was unknown, when memory was full, and on a periodic sweep), and persists the
//! watermark about once a second. A failed send is retried after a pause; while Kafka is away
//! the records wait in memory up to `--relay-max-pending`, beyond that in MongoDB itself.
//!
//! It never writes message documents and never decides what a change is: the service writes,
//! the outbox keeps the books.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use pipeline_contract::time::Timestamp;
use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::config::{KafkaArgs, RelayArgs};
use crate::metrics::Metrics;
use crate::outbox::{Outbox, PendingKey};
use crate::store::{After, Store};

/// Records handed to the producer at once (its own queue holds more; this bounds memory).
const MAX_SENDING: usize = 4096;
/// Pause after a failed send before the next attempt.
const RETRY_PAUSE: Duration = Duration::from_secs(1);
/// How long the relay lets new changes gather after a wake-up before sending them.
const GATHER: Duration = Duration::from_millis(20);
/// Longest wait on shutdown for the outbox to drain.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(10);

/// The producer as the relay needs it.
pub fn producer(kafka: &KafkaArgs, relay: &RelayArgs) -> Result<FutureProducer, KafkaError> {
    let mut config: ClientConfig = kafka.client_config();
    config
        .set("enable.idempotence", "true")
        .set("acks", "all")
        // The relay gathers changes itself (GATHER); records are small and the broker would
        // spend CPU decompressing batches to validate them, so no compression.
        .set("linger.ms", "5")
        .set(
            "message.timeout.ms",
            relay.relay_message_timeout_ms.to_string(),
        )
        // The outbox bounds what is queued; keep librdkafka's own buffer small to match.
        .set("queue.buffering.max.kbytes", "16384");
    config.create()
}

#[derive(Debug)]
pub struct Relay {
    pub outbox: Arc<Outbox>,
    pub store: Store,
    pub kafka: KafkaArgs,
    pub args: RelayArgs,
    pub metrics: Arc<Metrics>,
}

type Delivery = (PendingKey, Result<(), KafkaError>);

impl Relay {
    /// Runs until `shutdown`, then drains what it can within [`SHUTDOWN_FLUSH`] and persists the
    /// watermark. What is left is found again by the next start's scan.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), KafkaError> {
        let overlap = i64::try_from(self.args.overlap().as_millis()).unwrap_or(i64::MAX);
        let mut producer = producer(&self.kafka, &self.args)?;
        let start = match self.store.watermark().await {
            Ok(Some(millis)) => millis.saturating_sub(overlap),
            Ok(None) => 0,
            Err(error) => {
                // Without the watermark, scan everything: slow once, never lossy.
                tracing::warn!(%error, "reading the relay watermark failed; scanning from the start");
                0
            }
        };
        tracing::info!(from = %Timestamp::from_millis(start).unwrap_or_else(Timestamp::now), "relay starting: scanning for unpublished changes");
        self.outbox.request_scan(start);

        let mut sending: FuturesUnordered<futures::future::BoxFuture<'static, Delivery>> =
            FuturesUnordered::new();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut next_sweep = self
            .args
            .sweep_interval()
            .map(|every| Instant::now() + every);
        let mut resend_after = Instant::now();
        let mut persisted = i64::MIN;
        let mut stop_by: Option<Instant> = None;

        loop {
            if stop_by.is_none() && shutdown.is_cancelled() {
                tracing::info!(
                    pending = self.outbox.snapshot().pending,
                    "relay draining before exit"
                );
                stop_by = Some(Instant::now() + SHUTDOWN_FLUSH);
            }
            // 1. Hand unsent records to the producer (unless pausing after a failure).
            if Instant::now() >= resend_after && sending.len() < MAX_SENDING {
                for (key, record) in self.outbox.take_unsent(MAX_SENDING - sending.len()) {
                    let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
                    for (name, value) in &record.headers {
                        headers = headers.insert(Header {
                            key: name,
                            value: Some(value.as_bytes()),
                        });
                    }
                    let future_record = FutureRecord::to(&self.kafka.topic)
                        .key(&record.key)
                        .payload(&record.payload)
                        .headers(headers);
                    match producer.send_result(future_record) {
                        Ok(delivery) => sending.push(Box::pin(async move {
                            let result = match delivery.await {
                                Ok(Ok(_)) => Ok(()),
                                Ok(Err((error, _))) => Err(error),
                                Err(_) => Err(KafkaError::Canceled),
                            };
                            (key, result)
                        })),
                        Err((error, _)) => {
                            self.outbox.failed(key);
                            if !matches!(
                                error,
                                KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)
                            ) {
                                tracing::warn!(%error, "handing a record to the producer failed");
                                resend_after = Instant::now() + RETRY_PAUSE;
                            }
                            break;
                        }
                    }
                }
            }

            // 2. One page of a scan, when one is wanted and memory has room (not when stopping:
            //    the next start scans from the watermark anyway).
            if let Some(from) = self.outbox.scan_cursor().filter(|_| stop_by.is_none()) {
                match self
                    .store
                    .changed_since(&from, self.args.relay_scan_page)
                    .await
                {
                    Ok(docs) => {
                        let complete = docs.len()
                            < usize::try_from(self.args.relay_scan_page).unwrap_or(usize::MAX);
                        let mut queued = 0u64;
                        for doc in &docs {
                            match self.outbox.recovered(doc) {
                                Ok(true) => queued += 1,
                                Ok(false) => {}
                                Err(error) => {
                                    // Nothing can publish it; skipping keeps every other change
                                    // flowing. Loud, because it needs a human.
                                    tracing::error!(%error, "skipping a corrupt message document");
                                    self.metrics.relay_corrupt.inc();
                                }
                            }
                        }
                        self.metrics.relay_recovered.inc_by(queued);
                        let last = docs.last().map(|d| After {
                            millis: d.updated_at.timestamp_millis(),
                            id: d.id.clone(),
                        });
                        self.outbox.scanned(&from, last, complete);
                        if queued > 0 {
                            tracing::info!(queued, complete, "scan found unpublished changes");
                        }
                        if !complete {
                            continue;
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%error, "relay scan failed; retrying");
                        tokio::time::sleep(RETRY_PAUSE).await;
                    }
                }
            }

            if let Some(deadline) = stop_by
                && (self.outbox.is_drained() || Instant::now() >= deadline)
            {
                break;
            }

            // 3. Wait for an acknowledgement, a write, a tick or the end.
            let pause = tokio::time::sleep_until(resend_after.max(Instant::now()));
            tokio::select! {
                Some((key, result)) = sending.next(), if !sending.is_empty() => {
                    self.delivered(key, result, &mut resend_after, &mut producer);
                    // Take every other acknowledgement that is ready before sending more.
                    while let Some(Some((key, result))) = futures::FutureExt::now_or_never(sending.next()) {
                        self.delivered(key, result, &mut resend_after, &mut producer);
                    }
                }
                () = self.outbox.wake.notified() => {
                    // Let a burst of writes gather: one hand-over to the producer per window
                    // instead of one wake-up per write (the writes are durable already).
                    tokio::time::sleep(GATHER).await;
                }
                () = pause, if resend_after > Instant::now() => {}
                _ = tick.tick() => {
                    if let (Some(at), Some(every)) = (next_sweep, self.args.sweep_interval())
                        && Instant::now() >= at
                    {
                        next_sweep = Some(Instant::now() + every);
                        let w = self.outbox.watermark(overlap * 2);
                        self.outbox.request_scan(w.saturating_sub(overlap));
                    }
                    self.persist(&mut persisted, overlap).await;
                }
                // Handled at the top of the loop.
                () = shutdown.cancelled(), if stop_by.is_none() => {}
            }
        }
        // Whatever is still in flight is abandoned; the watermark below it makes the next start
        // publish it again.
        drop(sending);
        self.persist(&mut persisted, overlap).await;
        let _ = producer.flush(Duration::from_secs(1));
        tracing::info!(snapshot = ?self.outbox.snapshot(), "relay stopped");
        Ok(())
    }

    fn delivered(
        &self,
        key: PendingKey,
        result: Result<(), KafkaError>,
        resend_after: &mut Instant,
        producer: &mut FutureProducer,
    ) {
        match result {
            Ok(()) => {
                self.outbox.published(key);
                self.metrics.relay_published.inc();
            }
            Err(error) => {
                self.outbox.failed(key);
                self.metrics.relay_failures.inc();
                // One line per burst of failures (an outage fails every record in flight).
                if *resend_after <= Instant::now() {
                    tracing::warn!(%error, id = %key.id, version = key.version, pending = self.outbox.snapshot().pending, "publishing failed; retrying in 1 s");
                }
                *resend_after = Instant::now() + RETRY_PAUSE;
                if let Some(fatal) = producer.client().fatal_error() {
                    tracing::error!(error = ?fatal, "the producer hit a fatal error; creating a new one");
                    match self::producer(&self.kafka, &self.args) {
                        Ok(fresh) => *producer = fresh,
                        Err(error) => tracing::error!(%error, "creating a new producer failed"),
                    }
                }
            }
        }
    }

    async fn persist(&self, persisted: &mut i64, overlap: i64) {
        let w = self.outbox.watermark(overlap * 2);
        self.metrics
            .relay_lag_seconds
            .set(self.outbox.lag_millis() as f64 / 1000.0);
        let snapshot = self.outbox.snapshot();
        self.metrics
            .relay_pending
            .set(i64::try_from(snapshot.pending).unwrap_or(i64::MAX));
        if w > *persisted {
            match self.store.raise_watermark(w).await {
                Ok(()) => *persisted = w,
                Err(error) => tracing::warn!(%error, "persisting the relay watermark failed"),
            }
        }
    }
}

//! The consume loop: records in, bulk requests out, offsets committed only after what they
//! cover is durable.
//!
//! One task owns the consumer, the buffer, the lanes and the commit position, so no lock guards
//! them and their order is plain to read. Records are gathered into a buffer; whenever a lane is
//! free (up to `max_in_flight` at once while the breaker is closed) the buffer is cut into a new
//! lane and sent, while consuming goes on. Lanes finish in any order; a [`CommitTracker`] lets a
//! partition's offset move only over records that are all durable: indexed (or already newer)
//! or dead-lettered with the DLQ write awaited (property 3). When the breaker opens, running
//! lanes stop at their next request and wait, no lane starts, the assigned partitions are
//! paused and polling continues so the group membership survives; nothing is dead-lettered and
//! nothing that is not durable is committed (property 5). After the cooldown one lane alone is
//! the probe. A rebalance commits what is durable of the revoked partitions and drops the rest;
//! their next owner starts from that commit, and external versions make the repeat harmless
//! (property 2).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use pipeline_contract::kafka::{MessageId, header};
use pipeline_contract::telemetry;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use tokio_util::sync::CancellationToken;

use crate::batch::BatchLimits;
use crate::breaker::{BreakerConfig, Event};
use crate::consumer::{Context, Partitions, RebalanceNotice};
use crate::deliver::Delivery;
use crate::dlq::DlqWriter;
use crate::gate::Gate;
use crate::lane::{Held, Lane, Stalled};
use crate::metrics::Metrics;
use crate::record::ConsumedRecord;
use crate::retry::RetryPolicy;
use crate::sink::SearchSink;

/// What the loop needs besides its clients.
#[derive(Debug, Clone)]
pub struct Settings {
    pub topic: String,
    /// `max_count` bounds the records in flight at once over all lanes; each lane is a bulk
    /// request of up to `max_count / max_in_flight` records and `max_bytes`.
    pub batch: BatchLimits,
    pub retry: RetryPolicy,
    pub breaker: BreakerConfig,
    /// Bulk requests in flight at once while the breaker is closed.
    pub max_in_flight: usize,
}

impl Settings {
    /// Lanes at once while the breaker is closed.
    fn lanes(&self) -> usize {
        self.max_in_flight.max(1)
    }

    /// The bounds of one lane: an equal share of `batch.max_count`.
    fn lane_limits(&self) -> BatchLimits {
        self.batch.shared_by(self.lanes())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("subscribing to {topic}: {source}")]
    Subscribe { topic: String, source: KafkaError },
}

/// After this long without a record, a non-empty buffer goes out at once if a lane is free,
/// instead of waiting out the linger (capped by it): the engine has room, and nothing more is
/// coming for now.
const QUIET: Duration = Duration::from_millis(20);

/// Records taken from the consumer in one go before the loop looks at its lanes again.
const RECEIVE_BURST: usize = 256;

/// A running lane: it comes back with what it did not make durable.
type Running<'a> = FuturesUnordered<BoxFuture<'a, (Lane, Result<(), Stalled>)>>;

/// The consume loop and everything it owns.
pub struct Pipeline {
    partitions: Partitions,
    delivery: Delivery,
    gate: Arc<Gate>,
    metrics: Arc<Metrics>,
    settings: Settings,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Pipeline {
    pub fn new(
        consumer: StreamConsumer<Context>,
        sink: SearchSink,
        dlq: DlqWriter,
        metrics: Arc<Metrics>,
        settings: Settings,
    ) -> Self {
        let gate = Arc::new(Gate::new(settings.breaker, metrics.clone()));
        let delivery = Delivery {
            sink,
            dlq,
            gate: gate.clone(),
            metrics: metrics.clone(),
            retry: settings.retry,
            topic: settings.topic.clone(),
        };
        Self {
            partitions: Partitions::new(consumer, settings.topic.clone()),
            delivery,
            gate,
            metrics,
            settings,
        }
    }

    /// The breaker this loop sends through, for the worker Lease.
    pub fn gate(&self) -> Arc<Gate> {
        self.gate.clone()
    }

    /// Runs until `shutdown` fires; then stops polling, lets the running lanes finish, sends
    /// what it still holds once if the breaker allows, commits what is durable, and returns.
    ///
    /// Records held at once are bounded: lanes running or stalled (at most `max_in_flight`
    /// while the breaker is closed, one more per probe) plus a buffer of one lane's worth, which
    /// stops taking records when full (except while paused, when polling must go on to keep the
    /// group membership and librdkafka delivers no more than its prefetch).
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), PipelineError> {
        self.partitions
            .consumer
            .subscribe(&[&self.settings.topic])
            .map_err(|source| PipelineError::Subscribe {
                topic: self.settings.topic.clone(),
                source,
            })?;
        self.metrics.running.store(true, Ordering::Relaxed);
        let mut held = Held::new(self.settings.lane_limits(), Instant::now());
        let mut running: Running<'_> = FuturesUnordered::new();
        let mut stream = self.partitions.consumer.stream();
        // Whether the last wait for a record ran out: nothing more is coming for now.
        let mut quiet = false;
        loop {
            self.apply_rebalances(&mut held);
            if shutdown.is_cancelled() {
                break;
            }
            self.tend(&mut held, &mut running, quiet, &shutdown);
            quiet = false;
            let paused = self.partitions.is_paused();
            let receive = paused || !held.buffer.at_max_count();
            let wait = self.wait(&held, running.len(), paused);
            tokio::select! {
                biased;
                () = shutdown.cancelled() => {}
                Some((lane, result)) = running.next(), if !running.is_empty() => {
                    self.finish_lane(&mut held, lane, result);
                }
                r = tokio::time::timeout(wait, stream.next()), if receive => match r {
                    Ok(Some(first)) => {
                        self.receive(first, &mut held);
                        self.receive_ready(&mut stream, &mut held, paused);
                    }
                    Ok(None) => {}
                    Err(_) => quiet = true,
                },
                () = tokio::time::sleep(wait), if !receive => {}
            }
        }
        drop(stream);
        self.shut_down(held, running).await;
        self.metrics.running.store(false, Ordering::Relaxed);
        Ok(())
    }

    /// One turn of the loop's bookkeeping: the breaker notices time passing, lanes start where
    /// there is room, partitions pause or resume with the breaker, durable positions are
    /// committed.
    fn tend<'a>(
        &'a self,
        held: &mut Held,
        running: &mut Running<'a>,
        quiet: bool,
        shutdown: &'a CancellationToken,
    ) {
        let now = Instant::now();
        self.gate.record(&Event::TimePassed, now);
        self.start_lanes(held, running, quiet, shutdown, now);
        self.update_pause(held, running, now);
        self.commit_durable(held, running.is_empty(), now);
    }

    /// How long to wait for a record: until the buffer may go out (the end of its linger, or
    /// after a quiet spell). Without room for a lane, a finishing lane is what wakes the loop.
    fn wait(&self, held: &Held, running: usize, paused: bool) -> Duration {
        let now = Instant::now();
        match held.buffer.deadline() {
            _ if paused => Duration::from_millis(200),
            Some(deadline) if self.has_room(running, now) => deadline
                .saturating_duration_since(now)
                .min(QUIET)
                .max(Duration::from_millis(1)),
            _ => Duration::from_millis(500),
        }
    }

    /// Takes what else the consumer has ready right away, without a timer per record, up to
    /// [`RECEIVE_BURST`] and while the buffer has room (while paused, whatever comes).
    fn receive_ready<'s>(
        &self,
        stream: &mut rdkafka::consumer::MessageStream<'s, Context>,
        held: &mut Held,
        paused: bool,
    ) {
        for _ in 1..RECEIVE_BURST {
            if !paused && held.buffer.at_max_count() {
                break;
            }
            match stream.next().now_or_never() {
                Some(Some(received)) => self.receive(received, held),
                _ => break,
            }
        }
    }

    /// Shutdown: the running lanes finish (their backoffs end at once, so a lane waiting to
    /// retry comes back stalled); then what is stalled or buffered is sent once more if the
    /// engine lets us, and what is durable is committed. What is not stays uncommitted and the
    /// next owner of the partitions repeats it.
    async fn shut_down(&self, mut held: Held, mut running: Running<'_>) {
        while let Some((lane, result)) = running.next().await {
            self.finish_lane(&mut held, lane, result);
        }
        let mut rest: Vec<Lane> = held.stalled.drain(..).collect();
        if !held.buffer.is_empty() {
            rest.push(held.cut_lane());
        }
        if !rest.is_empty() && self.gate.allows(Instant::now()) {
            // A fresh token: these sends and DLQ writes are what shutdown is waiting for.
            let drained = CancellationToken::new();
            let closed = self.gate.is_closed();
            let at_once = if closed { self.settings.lanes() } else { 1 };
            let done: Vec<(Lane, Result<(), Stalled>)> = futures::stream::iter(
                rest.into_iter()
                    .map(|lane| self.run_lane(lane, !closed, &drained)),
            )
            .buffer_unordered(at_once)
            .collect()
            .await;
            for (lane, result) in done {
                self.finish_lane(&mut held, lane, result);
            }
        }
        held.tracker.take_advanced();
        self.partitions
            .commit(held.tracker.durable(), CommitMode::Sync);
    }

    /// Starts lanes while there is room: stalled ones first, then the buffer when it is due (or
    /// the consumer went quiet). While the breaker is not closed, a single lane alone: the probe.
    fn start_lanes<'a>(
        &'a self,
        held: &mut Held,
        running: &mut Running<'a>,
        quiet: bool,
        shutdown: &'a CancellationToken,
        now: Instant,
    ) {
        loop {
            if !self.has_room(running.len(), now) {
                return;
            }
            let closed = self.gate.is_closed();
            // With no lane running the engine is idle: what is buffered goes now, and what
            // arrives meanwhile waits only for that request (a batch per round trip, no timer
            // under a steady load). The linger and the size only decide when more lanes join.
            let idle = running.is_empty() && closed;
            let lane = if let Some(lane) = held.stalled.pop_front() {
                lane
            } else if held.buffer.is_due(now) || ((quiet || idle) && !held.buffer.is_empty()) {
                held.cut_lane()
            } else {
                return;
            };
            running.push(self.run_lane(lane, !closed, shutdown));
            if !closed {
                return;
            }
        }
    }

    /// Whether another lane may start next to `running` ones: up to `max_in_flight` while the
    /// breaker is closed, otherwise only the probe, alone, once the breaker allows one.
    fn has_room(&self, running: usize, now: Instant) -> bool {
        self.gate.has_room(running, self.settings.lanes(), now)
    }

    fn run_lane<'a>(
        &'a self,
        mut lane: Lane,
        probe: bool,
        shutdown: &'a CancellationToken,
    ) -> BoxFuture<'a, (Lane, Result<(), Stalled>)> {
        async move {
            let body = lane.body.take();
            let result = self
                .delivery
                .flush(&mut lane.items, body, probe, shutdown)
                .await;
            (lane, result)
        }
        .boxed()
    }

    /// A lane came back: durable, or stalled with what is left of it.
    fn finish_lane(&self, held: &mut Held, lane: Lane, result: Result<(), Stalled>) {
        if held.finish(lane, result) {
            let context = self.partitions.consumer.context();
            context.set_durable(held.tracker.durable());
        }
    }

    /// Partitions stay paused while the breaker is not closed and there is work waiting for it;
    /// half-open with nothing to probe with, they resume so a probe can form.
    fn update_pause(&self, held: &Held, running: &Running<'_>, now: Instant) {
        let paused = !self.gate.is_closed()
            && (!held.stalled.is_empty() || !running.is_empty() || !self.gate.allows(now));
        self.partitions.set_paused(paused);
    }

    /// Commits the positions that moved, asynchronously, when [`Held::due_commit`] says so.
    fn commit_durable(&self, held: &mut Held, idle: bool, now: Instant) {
        if let Some(advanced) = held.due_commit(idle, now) {
            self.partitions.commit(&advanced, CommitMode::Async);
        }
    }

    /// Takes one received record into the buffer.
    fn receive(&self, received: Result<BorrowedMessage<'_>, KafkaError>, held: &mut Held) {
        let message = match received {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "consumer error");
                return;
            }
        };
        let record = ConsumedRecord::from_message(&message);
        drop(message);
        // A rebalance served while this record was being received came before it: drop the
        // revoked partitions' records first, or a record of a partition assigned again would go
        // with them.
        self.apply_rebalances(held);
        self.metrics.consumed.inc();
        let layout = self.delivery.sink.layout();
        if telemetry::exporting() {
            let span = consume_span(&self.delivery.topic, &record);
            let trace = telemetry::traceparent(&span);
            span.in_scope(|| held.take_in(record, trace, layout, Instant::now()));
        } else {
            held.take_in(record, None, layout, Instant::now());
        }
    }

    fn apply_rebalances(&self, held: &mut Held) {
        for notice in self.partitions.consumer.context().take_notices() {
            match notice {
                RebalanceNotice::Revoked(partitions) => {
                    tracing::info!(
                        revoked = ?partitions,
                        "partitions revoked: dropping their uncommitted work"
                    );
                    held.revoke(&partitions, self.delivery.sink.layout());
                    self.partitions
                        .consumer
                        .context()
                        .set_durable(held.tracker.durable());
                }
                RebalanceNotice::Assigned => {
                    self.partitions.assigned();
                }
            }
        }
    }
}

/// The span of taking one record in (decoding its event, encoding its bulk lines): a child of
/// the record's `traceparent`, so it sits in the trace of the request that made the change; the
/// bulk requests that carry the record link to it.
fn consume_span(topic: &str, record: &ConsumedRecord) -> tracing::Span {
    let message = record
        .header(header::MESSAGE_ID)
        .and_then(|m| m.parse::<MessageId>().ok());
    let span = tracing::info_span!(
        parent: None,
        "consume",
        otel.name = format!("{topic} process"),
        otel.kind = "consumer",
        messaging.system = "kafka",
        messaging.operation.type = "process",
        messaging.destination.name = topic,
        messaging.destination.partition.id = record.partition,
        messaging.kafka.offset = record.offset,
        message.id = message.map(|m| m.id.to_string()).unwrap_or_default(),
        message.version = message.map_or(0, |m| m.version),
    );
    telemetry::set_parent(&span, record.header(header::TRACEPARENT));
    span
}

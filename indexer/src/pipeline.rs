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

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use pipeline_contract::dlq::{DlqHeaders, ErrorClass};
use pipeline_contract::kafka::header;
use pipeline_contract::search::{IndexLayout, SearchDocument};
use pipeline_contract::{MessageEvent, Timestamp};
use rdkafka::client::ClientContext;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::statistics::Statistics;
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::batch::{Batch, BatchLimits};
use crate::breaker::{Breaker, BreakerConfig, Event, Phase};
use crate::bulk;
use crate::classify::{RequestDecision, classify_request, partition};
use crate::commit::{CommitTracker, LaneId};
use crate::dlq::DlqWriter;
use crate::metrics::{Metrics, PartitionLabel};
use crate::record::Record;
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
        BatchLimits {
            max_count: self.batch.max_count.max(1).div_ceil(self.lanes()),
            ..self.batch
        }
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

/// Durable positions are committed at most this often while lanes are running (asynchronously),
/// and at once when the loop goes idle, at a revoke and at shutdown (synchronously).
const COMMIT_INTERVAL: Duration = Duration::from_millis(200);

/// Records taken from the consumer in one go before the loop looks at its lanes again.
const RECEIVE_BURST: usize = 256;

/// Rebalance notices and statistics from librdkafka's threads, read by the loop; the durable
/// positions the loop has reached, committed by the rebalance callback on revoke.
pub struct Context {
    rebalances: Mutex<Vec<RebalanceNotice>>,
    durable: Mutex<BTreeMap<i32, i64>>,
    metrics: Arc<Metrics>,
    topic: String,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
enum RebalanceNotice {
    Revoked(Vec<i32>),
    Assigned,
}

impl Context {
    pub fn new(metrics: Arc<Metrics>, topic: String) -> Self {
        Self {
            rebalances: Mutex::new(Vec::new()),
            durable: Mutex::new(BTreeMap::new()),
            metrics,
            topic,
        }
    }

    fn take_notices(&self) -> Vec<RebalanceNotice> {
        let mut notices = self.rebalances.lock().expect("rebalance notices");
        if notices.is_empty() {
            Vec::new()
        } else {
            std::mem::take(&mut *notices)
        }
    }

    fn set_durable(&self, durable: &BTreeMap<i32, i64>) {
        durable.clone_into(&mut self.durable.lock().expect("durable positions"));
    }
}

impl ClientContext for Context {
    fn stats(&self, statistics: Statistics) {
        let up = statistics.brokers.values().any(|b| b.state == "UP");
        self.metrics.kafka_up.store(up, Ordering::Relaxed);
        if let Some(topic) = statistics.topics.get(&self.topic) {
            for (partition, p) in &topic.partitions {
                if *partition >= 0 && p.consumer_lag >= 0 {
                    let label = PartitionLabel {
                        topic: self.topic.clone(),
                        partition: partition.to_string(),
                    };
                    self.metrics
                        .consumer_lag
                        .get_or_create(&label)
                        .set(p.consumer_lag);
                }
            }
        }
    }
}

impl ConsumerContext for Context {
    /// Before partitions go: commits what is durable of them (the loop keeps committing as it
    /// goes, so this only closes the last gap), then tells the loop to drop the rest.
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(list) = rebalance {
            let partitions: Vec<i32> = list.elements().iter().map(|e| e.partition()).collect();
            let mut commits = TopicPartitionList::new();
            {
                let mut durable = self.durable.lock().expect("durable positions");
                for p in &partitions {
                    if let Some(next) = durable.remove(p)
                        && let Err(e) =
                            commits.add_partition_offset(&self.topic, *p, Offset::Offset(next))
                    {
                        tracing::warn!(error = %e, partition = p, "invalid offset to commit");
                    }
                }
            }
            if commits.count() > 0
                && let Err(e) = consumer.commit(&commits, CommitMode::Sync)
            {
                tracing::warn!(error = %e, "commit on revoke failed; the next owner repeats these records");
            }
            self.rebalances
                .lock()
                .expect("rebalance notices")
                .push(RebalanceNotice::Revoked(partitions));
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(_) = rebalance {
            self.rebalances
                .lock()
                .expect("rebalance notices")
                .push(RebalanceNotice::Assigned);
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        if let Err(e) = result {
            tracing::warn!(error = %e, "commit failed; the next owner of these partitions repeats their records");
        }
    }
}

/// One consumed record on its way through a lane.
///
/// Its bulk lines are not kept with it: they are written once, when the record is consumed,
/// straight into the body of the lane it joins, which goes out as it is. Only a later request
/// for part of a lane (a retry, half of a split, a lane stopped by the breaker) encodes its
/// records again, from the record, which gives the same bytes.
#[derive(Debug)]
struct Item {
    record: Record,
    /// Bytes the item adds to a bulk body; 0 for a dead letter.
    size: usize,
    work: Work,
    attempts: u32,
    first_failure: Option<Timestamp>,
}

#[derive(Debug)]
enum Work {
    Index,
    DeadLetter { class: ErrorClass, message: String },
}

/// Decodes a record's event and appends its two bulk lines to `out`; returns how many bytes.
fn encode_record(
    record: &Record,
    layout: &IndexLayout,
    out: &mut Vec<u8>,
) -> Result<usize, (ErrorClass, String)> {
    let bytes = record
        .payload
        .as_deref()
        .ok_or_else(|| (ErrorClass::Undecodable, "record has no value".to_owned()))?;
    let event = MessageEvent::decode(bytes).map_err(|e| (e.error_class(), e.to_string()))?;
    let doc = SearchDocument::try_from(event).map_err(|e| (e.error_class(), e.to_string()))?;
    Ok(bulk::encode_item(layout, &doc, out))
}

impl Item {
    /// Takes a record in, appending its bulk lines to `body` when it can be indexed.
    fn from_record(record: Record, layout: &IndexLayout, body: &mut Vec<u8>) -> Self {
        let (size, work) = match encode_record(&record, layout, body) {
            Ok(size) => (size, Work::Index),
            Err((class, message)) => (0, Work::DeadLetter { class, message }),
        };
        Self {
            record,
            size,
            work,
            attempts: 0,
            first_failure: None,
        }
    }
}

/// The bulk body of `items` (dead letters add nothing), encoded again from their records. An
/// item that no longer encodes (it did when consumed, so it cannot) becomes a dead letter, so
/// the body always matches the items.
fn body_of(items: &mut [Item], layout: &IndexLayout) -> Vec<u8> {
    let mut body = Vec::with_capacity(items.iter().map(|i| i.size).sum());
    for item in items {
        if let Work::Index = item.work
            && let Err((class, message)) = encode_record(&item.record, layout, &mut body)
        {
            item.work = Work::DeadLetter { class, message };
            item.size = 0;
        }
    }
    body
}

/// A group of consecutive consumed records that travels as bulk requests of its own.
#[derive(Debug)]
struct Lane {
    id: LaneId,
    /// What is not durable yet, in consumption order.
    items: Vec<Item>,
    /// The bulk body of all of `items`, written as they were consumed; gone once sent.
    body: Option<Vec<u8>>,
}

/// The lane could not be made durable because the breaker is open (or the indexer is shutting
/// down); what is not durable stays in the lane.
#[derive(Debug)]
struct Stalled;

/// A running lane: it comes back with what it did not make durable.
type Running<'a> = FuturesUnordered<BoxFuture<'a, (Lane, Result<(), Stalled>)>>;

/// The loop's own state: records not yet in a lane, lanes waiting for the breaker, and what
/// may be committed.
#[derive(Debug)]
struct Held {
    buffer: Batch<Item>,
    /// The bulk body of the buffer's items.
    body: Vec<u8>,
    /// Lanes that stopped while the breaker was open, oldest first; they go out again before
    /// anything new.
    stalled: VecDeque<Lane>,
    tracker: CommitTracker,
    next_lane: LaneId,
    last_commit: Instant,
}

impl Held {
    /// Cuts the buffer into a new lane and tracks the runs it holds of each partition.
    fn cut_lane(&mut self) -> Lane {
        let id = self.next_lane;
        self.next_lane += 1;
        let items = self.buffer.take();
        let mut ends: Vec<(i32, i64)> = Vec::new();
        for item in &items {
            let (p, next) = (item.record.partition, item.record.offset + 1);
            match ends.iter_mut().find(|(q, _)| *q == p) {
                Some(end) => end.1 = end.1.max(next),
                None => ends.push((p, next)),
            }
        }
        for (p, next) in ends {
            self.tracker.track(id, p, next);
        }
        let capacity = self.body.capacity();
        let body = std::mem::replace(&mut self.body, Vec::with_capacity(capacity));
        Lane {
            id,
            items,
            body: Some(body),
        }
    }

    fn stall(&mut self, lane: Lane) {
        let at = self.stalled.partition_point(|l| l.id < lane.id);
        self.stalled.insert(at, lane);
    }

    /// Drops the records of revoked partitions that are not in a running lane.
    fn revoke(&mut self, revoked: &[i32], layout: &IndexLayout) {
        let keep = |i: &Item| !revoked.contains(&i.record.partition);
        let now = Instant::now();
        let mut kept: Vec<Item> = self.buffer.take().into_iter().filter(keep).collect();
        self.body = body_of(&mut kept, layout);
        for item in kept {
            let size = item.size;
            let _ = self.buffer.push(item, size, now);
        }
        for lane in &mut self.stalled {
            lane.items.retain(keep);
            lane.body = None;
        }
        let tracker = &mut self.tracker;
        self.stalled.retain(|lane| {
            if lane.items.is_empty() {
                // Every record it had left was of a revoked partition: the rest of it is durable.
                tracker.complete(lane.id);
            }
            !lane.items.is_empty()
        });
        tracker.revoke(revoked);
    }
}

/// The consume loop and everything it owns.
pub struct Pipeline {
    consumer: StreamConsumer<Context>,
    sink: SearchSink,
    dlq: DlqWriter,
    metrics: Arc<Metrics>,
    settings: Settings,
    /// Locked only for a state check or transition, never across an await.
    breaker: Mutex<Breaker>,
    paused: AtomicBool,
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
        let breaker = Mutex::new(Breaker::new(settings.breaker));
        Self {
            consumer,
            sink,
            dlq,
            metrics,
            settings,
            breaker,
            paused: AtomicBool::new(false),
        }
    }

    /// Runs until `shutdown` fires; then stops polling, lets the running lanes finish, sends
    /// what it still holds once if the breaker allows, commits what is durable, and returns.
    ///
    /// Records held at once are bounded: lanes running or stalled (at most `max_in_flight`
    /// while the breaker is closed, one more per probe) plus a buffer of one lane's worth, which
    /// stops taking records when full (except while paused, when polling must go on to keep the
    /// group membership and librdkafka delivers no more than its prefetch).
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), PipelineError> {
        self.consumer
            .subscribe(&[&self.settings.topic])
            .map_err(|source| PipelineError::Subscribe {
                topic: self.settings.topic.clone(),
                source,
            })?;
        self.metrics.running.store(true, Ordering::Relaxed);
        let limits = self.settings.lane_limits();
        let mut held = Held {
            buffer: Batch::new(limits),
            body: Vec::new(),
            stalled: VecDeque::new(),
            tracker: CommitTracker::new(),
            next_lane: 0,
            last_commit: Instant::now(),
        };
        let mut running: Running<'_> = FuturesUnordered::new();
        let mut stream = self.consumer.stream();
        // Whether the last wait for a record ran out: nothing more is coming for now.
        let mut quiet = false;
        loop {
            self.apply_rebalances(&mut held);
            if shutdown.is_cancelled() {
                break;
            }
            let now = Instant::now();
            self.breaker_event(&Event::TimePassed, now);
            self.start_lanes(&mut held, &mut running, quiet, &shutdown, now);
            quiet = false;
            self.update_pause(&held, &running, now);
            self.commit_durable(&mut held, running.is_empty(), now);

            let paused = self.paused.load(Ordering::Relaxed);
            let receive = paused || held.buffer.len() < limits.max_count.max(1);
            // Wake up when the buffer may go out: at the end of its linger, or after a quiet
            // spell. Without room for a lane, a finishing lane is what wakes the loop.
            let wait = match held.buffer.deadline() {
                _ if paused => Duration::from_millis(200),
                Some(deadline) if self.has_room(running.len(), now) => deadline
                    .saturating_duration_since(now)
                    .min(QUIET)
                    .max(Duration::from_millis(1)),
                _ => Duration::from_millis(500),
            };
            tokio::select! {
                biased;
                () = shutdown.cancelled() => {}
                Some((lane, result)) = running.next(), if !running.is_empty() => {
                    self.finish_lane(&mut held, lane, result);
                }
                r = tokio::time::timeout(wait, stream.next()), if receive => match r {
                    Ok(Some(received)) => {
                        self.receive(received, &mut held);
                        // More that is ready right away, without a timer per record.
                        for _ in 1..RECEIVE_BURST {
                            if !paused && held.buffer.len() >= limits.max_count.max(1) {
                                break;
                            }
                            match stream.next().now_or_never() {
                                Some(Some(received)) => self.receive(received, &mut held),
                                _ => break,
                            }
                        }
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
        if !rest.is_empty() && self.breaker_allows(Instant::now()) {
            // A fresh token: these sends and DLQ writes are what shutdown is waiting for.
            let drained = CancellationToken::new();
            let closed = self.breaker_closed();
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
        self.commit(held.tracker.durable(), CommitMode::Sync);
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
            let closed = self.breaker_closed();
            let lane = if let Some(lane) = held.stalled.pop_front() {
                lane
            } else if held.buffer.is_due(now) || (quiet && !held.buffer.is_empty()) {
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
        let breaker = self.breaker.lock().expect("breaker");
        if breaker.state().phase() == Phase::Closed {
            running < self.settings.lanes()
        } else {
            running == 0 && breaker.allows_request(now)
        }
    }

    fn run_lane<'a>(
        &'a self,
        mut lane: Lane,
        probe: bool,
        shutdown: &'a CancellationToken,
    ) -> BoxFuture<'a, (Lane, Result<(), Stalled>)> {
        async move {
            let body = lane.body.take();
            let result = self.flush(&mut lane.items, body, probe, shutdown).await;
            (lane, result)
        }
        .boxed()
    }

    /// A lane came back: durable, or stalled with what is left of it.
    fn finish_lane(&self, held: &mut Held, mut lane: Lane, result: Result<(), Stalled>) {
        match result {
            Ok(()) => {
                if held.tracker.complete(lane.id) {
                    self.consumer.context().set_durable(held.tracker.durable());
                }
            }
            Err(Stalled) => {
                // Partitions revoked while it ran are no longer ours to send.
                lane.items
                    .retain(|i| held.tracker.holds(lane.id, i.record.partition));
                if lane.items.is_empty() {
                    if held.tracker.complete(lane.id) {
                        self.consumer.context().set_durable(held.tracker.durable());
                    }
                } else {
                    held.stall(lane);
                }
            }
        }
    }

    /// Partitions stay paused while the breaker is not closed and there is work waiting for it;
    /// half-open with nothing to probe with, they resume so a probe can form.
    fn update_pause(&self, held: &Held, running: &Running<'_>, now: Instant) {
        let paused = !self.breaker_closed()
            && (!held.stalled.is_empty() || !running.is_empty() || !self.breaker_allows(now));
        self.set_paused(paused);
    }

    /// Commits the positions that moved, asynchronously: at most every [`COMMIT_INTERVAL`]
    /// while lanes run, at once when none does.
    fn commit_durable(&self, held: &mut Held, idle: bool, now: Instant) {
        if !idle && now.saturating_duration_since(held.last_commit) < COMMIT_INTERVAL {
            return;
        }
        let advanced = held.tracker.take_advanced();
        if advanced.is_empty() {
            return;
        }
        self.commit(&advanced, CommitMode::Async);
        held.last_commit = now;
    }

    /// Takes one received record into the buffer.
    fn receive(
        &self,
        received: Result<rdkafka::message::BorrowedMessage<'_>, KafkaError>,
        held: &mut Held,
    ) {
        let message = match received {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "consumer error");
                return;
            }
        };
        let record = Record::from_message(&message);
        drop(message);
        // A rebalance served while this record was being received came before it: drop the
        // revoked partitions' records first, or a record of a partition assigned again would go
        // with them.
        self.apply_rebalances(held);
        self.metrics.consumed.inc();
        let item = Item::from_record(record, self.sink.layout(), &mut held.body);
        let size = item.size;
        // A full buffer is noticed by `is_due`.
        let _ = held.buffer.push(item, size, Instant::now());
    }

    fn apply_rebalances(&self, held: &mut Held) {
        for notice in self.consumer.context().take_notices() {
            match notice {
                RebalanceNotice::Revoked(partitions) => {
                    tracing::info!(
                        revoked = ?partitions,
                        "partitions revoked: dropping their uncommitted work"
                    );
                    held.revoke(&partitions, self.sink.layout());
                    self.consumer.context().set_durable(held.tracker.durable());
                }
                RebalanceNotice::Assigned => {
                    // A new assignment starts resumed: pause it again while the breaker is open.
                    if self.paused.swap(false, Ordering::Relaxed) {
                        self.set_paused(true);
                    }
                }
            }
        }
    }

    fn set_paused(&self, paused: bool) {
        if self.paused.load(Ordering::Relaxed) == paused {
            return;
        }
        let Ok(assignment) = self.consumer.assignment() else {
            return;
        };
        let result = if paused {
            self.consumer.pause(&assignment)
        } else {
            self.consumer.resume(&assignment)
        };
        match result {
            Ok(()) => {
                self.paused.store(paused, Ordering::Relaxed);
                tracing::info!(
                    paused,
                    partitions = assignment.count(),
                    "partitions {}",
                    if paused { "paused" } else { "resumed" }
                );
            }
            Err(e) => tracing::warn!(error = %e, paused, "could not change pause state"),
        }
    }

    fn breaker_event(&self, event: &Event, now: Instant) {
        let transition = self.breaker.lock().expect("breaker").record(event, now);
        if let Some(transition) = transition {
            tracing::warn!(from = %transition.from, to = %transition.to, reason = %transition.reason, "circuit breaker");
            self.metrics.set_breaker(transition.to);
        }
    }

    fn breaker_allows(&self, now: Instant) -> bool {
        self.breaker.lock().expect("breaker").allows_request(now)
    }

    fn breaker_closed(&self) -> bool {
        self.breaker.lock().expect("breaker").state().phase() == Phase::Closed
    }

    /// Whether a lane may send a request now: the probe while the breaker allows one, any other
    /// lane only while it is closed.
    fn may_send(&self, probe: bool, now: Instant) -> bool {
        let breaker = self.breaker.lock().expect("breaker");
        breaker.allows_request(now) && (probe || breaker.state().phase() == Phase::Closed)
    }

    /// Commits `offsets` (next offset per partition). A failed commit is logged, not fatal: the
    /// records are durable already, and an uncommitted offset only means their next owner
    /// repeats them, which external versions make harmless (e.g. after a rebalance).
    fn commit(&self, offsets: &BTreeMap<i32, i64>, mode: CommitMode) {
        if offsets.is_empty() {
            return;
        }
        let mut list = TopicPartitionList::new();
        for (partition, next) in offsets {
            if let Err(e) =
                list.add_partition_offset(&self.settings.topic, *partition, Offset::Offset(*next))
            {
                tracing::warn!(error = %e, partition, "invalid offset to commit");
                return;
            }
        }
        if let Err(e) = self.consumer.commit(&list, mode) {
            tracing::warn!(error = %e, "commit failed; the next owner of these partitions repeats their records");
        }
    }

    /// Makes one lane's `pending` durable: indexes what can be, dead-letters what cannot
    /// (awaited), retries item-level failures within the bound. Returns `Stalled` with the rest
    /// still in `pending` when the breaker stops it: it opened, or it is not closed and this lane
    /// is not the probe. Two versions of one message may travel in different lanes: external
    /// versions make the order they land in irrelevant. `prebuilt` is the body of all of
    /// `pending`, when it is at hand: the first request sends it as it is.
    async fn flush(
        &self,
        pending: &mut Vec<Item>,
        mut prebuilt: Option<Vec<u8>>,
        probe: bool,
        shutdown: &CancellationToken,
    ) -> Result<(), Stalled> {
        let started = Instant::now();
        let mut chunk = pending.len().max(1);
        loop {
            if !self.may_send(probe, Instant::now()) {
                return Err(Stalled);
            }
            // Dead letters first: awaited before anything after them is committed.
            let (dead, live): (Vec<Item>, Vec<Item>) = std::mem::take(pending)
                .into_iter()
                .partition(|i| matches!(i.work, Work::DeadLetter { .. }));
            *pending = live;
            let mut dead = dead.into_iter();
            while let Some(item) = dead.next() {
                if let Err(e) = self.dead_letter(&item, shutdown).await {
                    tracing::warn!(error = %e, "stopping with a dead letter unwritten; its offset stays uncommitted");
                    // It and every dead letter after it stay in the lane.
                    pending.push(item);
                    pending.extend(dead);
                    return Err(Stalled);
                }
            }
            if pending.is_empty() {
                self.metrics
                    .batch_seconds
                    .observe(started.elapsed().as_secs_f64());
                return Ok(());
            }
            let now = Instant::now();
            self.breaker_event(&Event::TimePassed, now);
            if !self.may_send(probe, now) {
                return Err(Stalled);
            }
            let take = chunk.min(pending.len());
            let body = match prebuilt.take() {
                Some(body) if take == pending.len() => body,
                _ => {
                    let body = body_of(&mut pending[..take], self.sink.layout());
                    if pending[..take]
                        .iter()
                        .any(|i| matches!(i.work, Work::DeadLetter { .. }))
                    {
                        continue;
                    }
                    body
                }
            };
            let (outcome, results) = self.sink.bulk(body).await;
            let mut sent: Vec<Item> = pending.drain(..take).collect();
            let failure = match classify_request(&outcome, sent.len()) {
                RequestDecision::Split => {
                    chunk = (take / 2).max(1);
                    pending.splice(0..0, sent);
                    continue;
                }
                RequestDecision::DeadLetter { class, message } => {
                    for item in &mut sent {
                        item.work = Work::DeadLetter {
                            class,
                            message: message.clone(),
                        };
                        item.size = 0;
                    }
                    pending.splice(0..0, sent);
                    continue;
                }
                RequestDecision::BreakerFailure(f) => Some((f, sent)),
                RequestDecision::InspectItems if results.len() != sent.len() => {
                    let message = format!(
                        "bulk answered {} items for {} sent",
                        results.len(),
                        sent.len()
                    );
                    Some((
                        crate::classify::BreakerFailure {
                            kind: crate::classify::FailureKind::UnexpectedResponse,
                            message,
                        },
                        sent,
                    ))
                }
                RequestDecision::InspectItems => {
                    for item in &mut sent {
                        item.attempts += 1;
                    }
                    let indexed: Vec<(usize, u32, _)> = results
                        .into_iter()
                        .enumerate()
                        .map(|(i, r)| (i, sent[i].attempts, r))
                        .collect();
                    let sorted = partition(indexed, self.settings.retry.max_attempts);
                    let mut slots: Vec<Option<Item>> = sent.into_iter().map(Some).collect();
                    let acked = Timestamp::now();
                    for i in &sorted.done {
                        let item = slots[*i].take().expect("each item sorted once");
                        if let Some(ts) = item
                            .record
                            .header(header::TIMESTAMP)
                            .and_then(|t| t.parse::<Timestamp>().ok())
                        {
                            let lag_ms = acked
                                .timestamp_millis()
                                .saturating_sub(ts.timestamp_millis())
                                .max(0);
                            self.metrics
                                .freshness_seconds
                                .observe(lag_ms as f64 / 1000.0);
                        }
                    }
                    self.metrics
                        .indexed
                        .inc_by((sorted.done.len() - sorted.already_newer) as u64);
                    self.metrics
                        .already_newer
                        .inc_by(sorted.already_newer as u64);
                    let mut again = Vec::new();
                    for d in sorted.dead_letter {
                        let mut item = slots[d.item].take().expect("each item sorted once");
                        item.work = Work::DeadLetter {
                            class: d.class,
                            message: d.message,
                        };
                        item.size = 0;
                        again.push(item);
                    }
                    let retrying = sorted.retry.len();
                    for i in sorted.retry {
                        let mut item = slots[i].take().expect("each item sorted once");
                        item.first_failure.get_or_insert_with(Timestamp::now);
                        again.push(item);
                    }
                    let breaker_failure = sorted.breaker.first().map(|(_, f)| f.clone());
                    for (i, _) in sorted.breaker {
                        again.push(slots[i].take().expect("each item sorted once"));
                    }
                    pending.splice(0..0, again);
                    match breaker_failure {
                        Some(f) => Some((f, Vec::new())),
                        None => {
                            self.breaker_event(&Event::Succeeded, Instant::now());
                            if retrying > 0 {
                                self.metrics.retried.inc_by(retrying as u64);
                                let attempt = pending.iter().map(|i| i.attempts).max().unwrap_or(1);
                                let delay = self.settings.retry.delay(attempt, fastrand::f64());
                                tokio::select! {
                                    () = shutdown.cancelled() => return Err(Stalled),
                                    () = tokio::time::sleep(delay) => {}
                                }
                            }
                            None
                        }
                    }
                }
            };
            if let Some((failure, unsent)) = failure {
                pending.splice(0..0, unsent);
                self.metrics.breaker_failures.inc();
                tracing::warn!(%failure, items = pending.len(), "bulk request failed as a whole");
                self.breaker_event(
                    &Event::Failed {
                        reason: failure.to_string(),
                    },
                    Instant::now(),
                );
                if !self.may_send(probe, Instant::now()) {
                    return Err(Stalled);
                }
                let delay = self.settings.retry.delay(1, fastrand::f64());
                tokio::select! {
                    () = shutdown.cancelled() => return Err(Stalled),
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    }

    async fn dead_letter(
        &self,
        item: &Item,
        shutdown: &CancellationToken,
    ) -> Result<(), crate::dlq::Abandoned> {
        let Work::DeadLetter { class, message } = &item.work else {
            return Ok(());
        };
        let redrive_count = item
            .record
            .header(pipeline_contract::dlq::header::REDRIVE_COUNT)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let headers = DlqHeaders {
            source_topic: self.settings.topic.clone(),
            source_partition: item.record.partition,
            source_offset: item.record.offset,
            error_class: *class,
            error_message: message.clone(),
            attempts: item.attempts.max(1),
            first_failure: item.first_failure.unwrap_or_else(Timestamp::now),
            redrive_count,
        };
        self.dlq.write(&item.record, &headers, shutdown).await?;
        tracing::warn!(class = %class, message = %message, partition = item.record.partition, offset = item.record.offset, dlq = self.dlq.topic(), "dead-lettered");
        self.metrics
            .dead_lettered
            .get_or_create(&crate::metrics::ClassLabel {
                class: class.to_string(),
            })
            .inc();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pipeline_contract::MessagePayload;
    use uuid::Uuid;

    fn layout() -> IndexLayout {
        IndexLayout::new("chat").unwrap()
    }

    /// A record of an event that can be indexed, or of garbage.
    fn record(partition: i32, offset: i64, indexable: bool) -> Record {
        let payload = if indexable {
            MessageEvent::Created(MessagePayload {
                id: Uuid::new_v4(),
                conversation_id: Some(Uuid::new_v4()),
                sender_id: Some(Uuid::new_v4()),
                content: format!("record {partition}/{offset}"),
                tenant_id: "tenant-a".into(),
                timestamp: Some(Timestamp::now()),
                updated_at: None,
                metadata: serde_json::Map::new(),
                version: Some(1),
            })
            .encode()
        } else {
            b"{not json".to_vec()
        };
        Record {
            partition,
            offset,
            key: None,
            payload: Some(payload),
            headers: Vec::new(),
        }
    }

    fn held(max_count: usize) -> Held {
        Held {
            buffer: Batch::new(BatchLimits {
                max_count,
                ..BatchLimits::default()
            }),
            body: Vec::new(),
            stalled: VecDeque::new(),
            tracker: CommitTracker::new(),
            next_lane: 0,
            last_commit: Instant::now(),
        }
    }

    fn push(held: &mut Held, record: Record) {
        let item = Item::from_record(record, &layout(), &mut held.body);
        let size = item.size;
        let _ = held.buffer.push(item, size, Instant::now());
    }

    /// The body a lane would send: what encoding its items one by one gives.
    fn expected_body(items: &mut [Item]) -> Vec<u8> {
        body_of(items, &layout())
    }

    #[test]
    fn a_lane_carries_the_body_of_its_items_and_tracks_each_partition_to_its_last_record() {
        let mut h = held(100);
        // (partition, offset, indexable), in the order consumed.
        let consumed = [
            (0, 10, true),
            (1, 3, true),
            (0, 11, false),
            (2, 7, true),
            (0, 12, true),
        ];
        for (p, o, ok) in consumed {
            push(&mut h, record(p, o, ok));
        }
        let mut lane = h.cut_lane();
        assert_eq!(lane.items.len(), 5);
        let body = lane.body.take().expect("a fresh lane has its body");
        assert_eq!(body, expected_body(&mut lane.items));
        assert_eq!(body.len(), lane.items.iter().map(|i| i.size).sum::<usize>());
        assert!(matches!(lane.items[2].work, Work::DeadLetter { .. }));
        assert!(h.buffer.is_empty() && h.body.is_empty());
        // Durable: each partition moves past the lane's last record of it.
        h.tracker.complete(lane.id);
        let advanced: Vec<(i32, i64)> = h.tracker.take_advanced().into_iter().collect();
        assert_eq!(advanced, [(0, 13), (1, 4), (2, 8)]);
    }

    #[test]
    fn a_revoke_drops_what_is_not_running_and_keeps_bodies_whole() {
        let mut h = held(100);
        for (p, o) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
            push(&mut h, record(p, o, true));
        }
        let running = h.cut_lane();
        for (p, o) in [(0, 2), (1, 2)] {
            push(&mut h, record(p, o, true));
        }
        let mut stalled = h.cut_lane();
        stalled.body = None;
        h.stall(stalled);
        for (p, o) in [(1, 3), (0, 3), (1, 4)] {
            push(&mut h, record(p, o, true));
        }

        h.revoke(&[1], &layout());

        // The buffer keeps partition 0 only, and its body is exactly theirs.
        let mut buffered = h.buffer.take();
        let kept: Vec<(i32, i64)> = buffered
            .iter()
            .map(|i| (i.record.partition, i.record.offset))
            .collect();
        assert_eq!(kept, [(0, 3)]);
        assert_eq!(h.body, expected_body(&mut buffered));
        // The stalled lane keeps partition 0 and will be encoded again.
        let lane = &h.stalled[0];
        assert_eq!(lane.items.len(), 1);
        assert_eq!(lane.items[0].record.partition, 0);
        assert!(lane.body.is_none());
        // The running lane no longer holds partition 1; finishing it moves only partition 0.
        assert!(h.tracker.holds(running.id, 0));
        assert!(!h.tracker.holds(running.id, 1));
        h.tracker.complete(running.id);
        let advanced: Vec<(i32, i64)> = h.tracker.take_advanced().into_iter().collect();
        assert_eq!(advanced, [(0, 2)]);
    }

    #[test]
    fn lane_limits_share_the_window() {
        // (max_count, max_in_flight, records per lane)
        let cases = [
            (6000, 4, 1500),
            (6000, 0, 6000),
            (10, 4, 3),
            (0, 4, 1),
            (5, 8, 1),
        ];
        for (max_count, max_in_flight, per_lane) in cases {
            let settings = Settings {
                topic: "t".into(),
                batch: BatchLimits {
                    max_count,
                    ..BatchLimits::default()
                },
                retry: RetryPolicy::default(),
                breaker: BreakerConfig::default(),
                max_in_flight,
            };
            assert_eq!(
                settings.lane_limits().max_count,
                per_lane,
                "{max_count} over {max_in_flight}"
            );
        }
    }
}

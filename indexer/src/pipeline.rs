//! The consume loop: records in, batches out, offsets committed only after a batch is durable.
//!
//! One task owns the consumer, the batch, the breaker and the commit position, so no lock guards
//! them and their order is plain to read. A record's offset is committed only after every record
//! consumed before it is indexed (or already newer) or dead-lettered with the DLQ write awaited
//! (property 3). When the breaker is open the assigned partitions are paused, polling continues
//! so the group membership survives, nothing is dead-lettered and nothing is committed
//! (property 5). A rebalance drops the work of revoked partitions; their next owner starts from
//! the last commit, and external versions make the repeat harmless (property 2).

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pipeline_contract::dlq::{DlqHeaders, ErrorClass};
use pipeline_contract::kafka::header;
use pipeline_contract::search::{IndexLayout, SearchDocument};
use pipeline_contract::{MessageEvent, Timestamp};
use rdkafka::client::ClientContext;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::statistics::Statistics;
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::batch::{Batch, BatchLimits};
use crate::breaker::{Breaker, BreakerConfig, Event, Phase};
use crate::bulk;
use crate::classify::{RequestDecision, classify_request, partition};
use crate::dlq::DlqWriter;
use crate::metrics::{Metrics, PartitionLabel};
use crate::record::Record;
use crate::retry::RetryPolicy;
use crate::sink::SearchSink;

/// What the loop needs besides its clients.
#[derive(Debug, Clone)]
pub struct Settings {
    pub topic: String,
    pub batch: BatchLimits,
    pub retry: RetryPolicy,
    pub breaker: BreakerConfig,
    /// Bulk requests in flight at once while the breaker is closed.
    pub max_in_flight: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("subscribing to {topic}: {source}")]
    Subscribe { topic: String, source: KafkaError },
}

/// Rebalance notices and statistics from librdkafka's threads, read by the loop.
pub struct Context {
    rebalances: Mutex<Vec<RebalanceNotice>>,
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
            metrics,
            topic,
        }
    }

    fn take_notices(&self) -> Vec<RebalanceNotice> {
        std::mem::take(&mut *self.rebalances.lock().expect("rebalance notices"))
    }
}

impl ClientContext for Context {
    fn stats(&self, statistics: Statistics) {
        let up = statistics.brokers.values().any(|b| b.state == "UP");
        self.metrics
            .kafka_up
            .store(up, std::sync::atomic::Ordering::Relaxed);
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
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(list) = rebalance {
            let partitions = list.elements().iter().map(|e| e.partition()).collect();
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
}

/// One consumed record on its way through a batch.
#[derive(Debug)]
struct Item {
    record: Record,
    work: Work,
    attempts: u32,
    first_failure: Option<Timestamp>,
}

#[derive(Debug)]
enum Work {
    /// The item's two lines of the bulk body, encoded once when the record is consumed.
    Index(Vec<u8>),
    DeadLetter {
        class: ErrorClass,
        message: String,
    },
}

impl Item {
    fn from_record(record: Record, layout: &IndexLayout) -> Self {
        let decoded = match &record.payload {
            None => Err((ErrorClass::Undecodable, "record has no value".to_owned())),
            Some(bytes) => MessageEvent::decode(bytes)
                .map_err(|e| (e.error_class(), e.to_string()))
                .and_then(|event| {
                    SearchDocument::try_from(event).map_err(|e| (e.error_class(), e.to_string()))
                }),
        };
        let work = match decoded {
            Ok(doc) => {
                let mut encoded = Vec::new();
                bulk::encode_item(layout, &doc, &mut encoded);
                Work::Index(encoded)
            }
            Err((class, message)) => Work::DeadLetter { class, message },
        };
        Self {
            record,
            work,
            attempts: 0,
            first_failure: None,
        }
    }

    /// What the item adds to a bulk body.
    fn size(&self) -> usize {
        match &self.work {
            Work::Index(encoded) => encoded.len(),
            Work::DeadLetter { .. } => 0,
        }
    }
}

/// The batch could not be made durable because the breaker is open; it stays pending.
struct Stalled;

/// The consume loop and everything it owns.
pub struct Pipeline {
    consumer: StreamConsumer<Context>,
    sink: SearchSink,
    dlq: DlqWriter,
    metrics: Arc<Metrics>,
    settings: Settings,
    /// Locked only for a state check or transition, never across an await.
    breaker: Mutex<Breaker>,
    paused: bool,
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
            paused: false,
        }
    }

    /// Runs until `shutdown` fires; then makes what it holds durable if the breaker allows,
    /// commits, and returns.
    ///
    /// While one batch is being flushed the next one is consumed, so decoding overlaps the
    /// engine's work. Each flushed batch commits the offsets recorded when it was taken, never
    /// those of records still waiting in the next batch.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), PipelineError> {
        self.consumer
            .subscribe(&[&self.settings.topic])
            .map_err(|source| PipelineError::Subscribe {
                topic: self.settings.topic.clone(),
                source,
            })?;
        self.metrics
            .running
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let mut batch: Batch<Item> = Batch::new(self.settings.batch);
        // Next offset per partition of every record received, and of those in `pending`.
        let mut consumed: BTreeMap<i32, i64> = BTreeMap::new();
        let mut pending: Vec<Item> = Vec::new();
        let mut pending_offsets: BTreeMap<i32, i64> = BTreeMap::new();
        loop {
            self.apply_rebalances(
                &mut batch,
                &mut pending,
                &mut [&mut consumed, &mut pending_offsets],
            );
            if shutdown.is_cancelled() {
                break;
            }
            if pending.is_empty() && batch.is_due(Instant::now()) {
                pending = batch.take();
                pending_offsets = consumed.clone();
            }
            if !pending.is_empty() {
                let now = Instant::now();
                self.breaker_event(&Event::TimePassed, now);
                if self.breaker_allows(now) {
                    let flushed = {
                        let flush = self.flush_concurrently(&mut pending, &shutdown);
                        tokio::pin!(flush);
                        loop {
                            if batch.is_due(Instant::now()) {
                                break (&mut flush).await;
                            }
                            tokio::select! {
                                r = &mut flush => break r,
                                m = tokio::time::timeout(Duration::from_millis(100), self.consumer.recv()) => {
                                    if let Ok(m) = m {
                                        self.receive(m, &mut batch, &mut consumed);
                                    }
                                }
                            }
                        }
                    };
                    match flushed {
                        Ok(()) => {
                            self.commit(&pending_offsets);
                            pending_offsets.clear();
                            self.set_paused(false);
                        }
                        Err(Stalled) => self.set_paused(true),
                    }
                    continue;
                }
                self.set_paused(true);
            }
            // Poll even while paused: that keeps the group membership and runs rebalances.
            let wait = if !pending.is_empty() {
                Duration::from_millis(200)
            } else {
                batch.deadline().map_or(Duration::from_millis(500), |d| {
                    d.saturating_duration_since(Instant::now())
                })
            };
            tokio::select! {
                () = shutdown.cancelled() => {}
                r = tokio::time::timeout(wait, self.consumer.recv()) => {
                    if let Ok(m) = r {
                        self.receive(m, &mut batch, &mut consumed);
                    }
                }
            }
        }
        // Shutdown: make what is held durable once, if the engine lets us; otherwise it stays
        // uncommitted and the next owner of the partitions repeats it.
        pending.extend(batch.take());
        if pending.is_empty() || self.breaker_allows(Instant::now()) {
            let drained = CancellationToken::new();
            if self
                .flush_concurrently(&mut pending, &drained)
                .await
                .is_ok()
            {
                self.commit(&consumed);
            }
        }
        self.metrics
            .running
            .store(false, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Takes one received record into the batch.
    fn receive(
        &self,
        received: Result<rdkafka::message::BorrowedMessage<'_>, KafkaError>,
        batch: &mut Batch<Item>,
        consumed: &mut BTreeMap<i32, i64>,
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
        self.metrics.consumed.inc();
        consumed.insert(record.partition, record.offset + 1);
        let item = Item::from_record(record, self.sink.layout());
        let size = item.size();
        // A full batch is noticed by `is_due`.
        let _ = batch.push(item, size, Instant::now());
    }

    fn apply_rebalances(
        &mut self,
        batch: &mut Batch<Item>,
        pending: &mut Vec<Item>,
        offsets: &mut [&mut BTreeMap<i32, i64>],
    ) {
        for notice in self.consumer.context().take_notices() {
            match notice {
                RebalanceNotice::Revoked(partitions) => {
                    let revoked: HashSet<i32> = partitions.into_iter().collect();
                    tracing::info!(
                        ?revoked,
                        "partitions revoked: dropping their uncommitted work"
                    );
                    let keep = |items: Vec<Item>| -> Vec<Item> {
                        items
                            .into_iter()
                            .filter(|i| !revoked.contains(&i.record.partition))
                            .collect()
                    };
                    *pending = keep(std::mem::take(pending));
                    let rest = keep(batch.take());
                    let now = Instant::now();
                    for item in rest {
                        let size = item.size();
                        let _ = batch.push(item, size, now);
                    }
                    for map in offsets.iter_mut() {
                        map.retain(|p, _| !revoked.contains(p));
                    }
                }
                RebalanceNotice::Assigned => {
                    // A new assignment starts resumed: pause it again while the breaker is open.
                    if self.paused {
                        self.paused = false;
                        self.set_paused(true);
                    }
                }
            }
        }
    }

    fn set_paused(&mut self, paused: bool) {
        if self.paused == paused {
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
                self.paused = paused;
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

    /// Flushes `pending` as up to `max_in_flight` concurrent bulk requests of equal share. Two
    /// versions of one message may travel in different requests: external versions make the
    /// order they land in irrelevant. A breaker that is not closed gets a single request:
    /// half-open allows exactly one probe. Whatever did not become durable is back in `pending`.
    async fn flush_concurrently(
        &self,
        pending: &mut Vec<Item>,
        shutdown: &CancellationToken,
    ) -> Result<(), Stalled> {
        let lanes = self.settings.max_in_flight.max(1);
        if lanes == 1 || !self.breaker_closed() {
            return self.flush(pending, shutdown).await;
        }
        let share = pending.len().div_ceil(lanes).max(1);
        let mut groups: Vec<Vec<Item>> = Vec::with_capacity(lanes);
        let mut rest = std::mem::take(pending).into_iter().peekable();
        while rest.peek().is_some() {
            groups.push(rest.by_ref().take(share).collect());
        }
        groups.retain(|g| !g.is_empty());
        let results =
            futures::future::join_all(groups.iter_mut().map(|g| self.flush(g, shutdown))).await;
        *pending = groups.into_iter().flatten().collect();
        if results.iter().all(Result::is_ok) {
            Ok(())
        } else {
            Err(Stalled)
        }
    }

    /// Commits `offsets` (next offset per partition). A failed commit is logged, not fatal: the
    /// records are durable already, and an uncommitted offset only means their next owner
    /// repeats them, which external versions make harmless (e.g. after a rebalance).
    fn commit(&self, offsets: &BTreeMap<i32, i64>) {
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
        if let Err(e) = self.consumer.commit(&list, CommitMode::Sync) {
            tracing::warn!(error = %e, "commit failed; the next owner of these partitions repeats their records");
        }
    }

    /// Makes `pending` durable: indexes what can be, dead-letters what cannot (awaited), retries
    /// item-level failures within the bound. Returns `Stalled` with the rest still in `pending`
    /// when the breaker opens.
    async fn flush(
        &self,
        pending: &mut Vec<Item>,
        shutdown: &CancellationToken,
    ) -> Result<(), Stalled> {
        let started = Instant::now();
        let mut chunk = pending.len().max(1);
        loop {
            // Dead letters first: awaited before anything after them is committed.
            let (dead, live): (Vec<Item>, Vec<Item>) = std::mem::take(pending)
                .into_iter()
                .partition(|i| matches!(i.work, Work::DeadLetter { .. }));
            *pending = live;
            for item in dead {
                if let Err(e) = self.dead_letter(&item, shutdown).await {
                    tracing::warn!(error = %e, "stopping with a dead letter unwritten; its offset stays uncommitted");
                    pending.push(item);
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
            if !self.breaker_allows(now) {
                return Err(Stalled);
            }
            let take = chunk.min(pending.len());
            let mut body = Vec::with_capacity(pending[..take].iter().map(Item::size).sum());
            for item in &pending[..take] {
                if let Work::Index(encoded) = &item.work {
                    body.extend_from_slice(encoded);
                }
            }
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
                if !self.breaker_allows(Instant::now()) {
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

//! The Kafka consumer of the loop and its librdkafka context.
//!
//! librdkafka calls the context from its own threads: statistics (broker state, consumer lag),
//! rebalances and commit results. The context never touches the loop's state; it queues
//! rebalance notices the loop takes on its next turn, and on a revoke it commits the durable
//! positions the loop last handed it, so the next owner starts after everything already
//! durable.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use pipeline_contract::kafka_client::Refusals;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaResult;
use rdkafka::statistics::Statistics;
use rdkafka::{Offset, TopicPartitionList};

use crate::config::RunArgs;
use crate::metrics::{Metrics, PartitionLabel};

/// The consumer as the loop needs it: manual commits, bounded queues, statistics for lag.
pub fn consumer(
    args: &RunArgs,
    metrics: Arc<Metrics>,
) -> Result<StreamConsumer<Context>, rdkafka::error::KafkaError> {
    let mut config = args.kafka.connection.client_config();
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
    let refusals = Refusals::into_log(
        &args.kafka.connection.bootstrap_servers,
        metrics.refusals.clone(),
    );
    config.create_with_context(Context::new(metrics, args.kafka.topic.clone()).recording(refusals))
}

/// Rebalance notices and statistics from librdkafka's threads, read by the loop; the durable
/// positions the loop has reached, committed by the rebalance callback on revoke.
pub struct Context {
    rebalances: Mutex<Vec<RebalanceNotice>>,
    durable: Mutex<BTreeMap<i32, i64>>,
    metrics: Arc<Metrics>,
    topic: String,
    refusals: Option<Refusals>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
pub(crate) enum RebalanceNotice {
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
            refusals: None,
        }
    }

    /// The context recording the refusals the consumer's connections meet.
    #[must_use]
    pub fn recording(mut self, refusals: Refusals) -> Self {
        self.refusals = Some(refusals);
        self
    }

    pub(crate) fn take_notices(&self) -> Vec<RebalanceNotice> {
        let mut notices = self.rebalances.lock().expect("rebalance notices");
        if notices.is_empty() {
            Vec::new()
        } else {
            std::mem::take(&mut *notices)
        }
    }

    pub(crate) fn set_durable(&self, durable: &BTreeMap<i32, i64>) {
        durable.clone_into(&mut self.durable.lock().expect("durable positions"));
    }
}

impl ClientContext for Context {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        match &self.refusals {
            Some(refusals) => refusals.error(error, reason),
            None => tracing::error!(%error, reason, "Kafka consumer error"),
        }
    }

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

/// The consumer as the loop drives it: commits of durable positions, and the pause of every
/// assigned partition while the breaker holds the work back.
pub(crate) struct Partitions {
    pub(crate) consumer: StreamConsumer<Context>,
    topic: String,
    paused: AtomicBool,
}

impl Partitions {
    pub(crate) fn new(consumer: StreamConsumer<Context>, topic: String) -> Self {
        Self {
            consumer,
            topic,
            paused: AtomicBool::new(false),
        }
    }

    pub(crate) fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Relaxed)
    }

    /// A new assignment starts resumed: pause it again if the loop had paused.
    pub(crate) fn assigned(&self) {
        if self.paused.swap(false, Ordering::Relaxed) {
            self.set_paused(true);
        }
    }

    /// Pauses or resumes every assigned partition (nothing when already so).
    pub(crate) fn set_paused(&self, paused: bool) {
        if self.is_paused() == paused {
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

    /// Commits `offsets` (next offset per partition). A failed commit is logged, not fatal: the
    /// records are durable already, and an uncommitted offset only means their next owner
    /// repeats them, which external versions make harmless (e.g. after a rebalance).
    pub(crate) fn commit(&self, offsets: &BTreeMap<i32, i64>, mode: CommitMode) {
        if offsets.is_empty() {
            return;
        }
        let mut list = TopicPartitionList::new();
        for (partition, next) in offsets {
            if let Err(e) =
                list.add_partition_offset(&self.topic, *partition, Offset::Offset(*next))
            {
                tracing::warn!(error = %e, partition, "invalid offset to commit");
                return;
            }
        }
        if let Err(e) = self.consumer.commit(&list, mode) {
            tracing::warn!(error = %e, "commit failed; the next owner of these partitions repeats their records");
        }
    }
}

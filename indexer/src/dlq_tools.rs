//! `indexer dlq inspect` and `indexer dlq replay`: reading the dead-letter topic and re-driving
//! selected records to the events topic.
//!
//! The decisions are pure and table-tested: which dead letters a replay selects, skips or refuses
//! (a record older than the tombstone horizon could resurrect a purged delete), the headers of a
//! re-driven record, and the summaries. The I/O reads the DLQ from the beginning up to the high
//! watermarks taken when the read starts, so a replay terminates even if its records come back to
//! the DLQ while it runs. This module never deletes from the DLQ (Kafka cannot), never commits
//! offsets as a group, and never writes to the DLQ.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::Duration;

use pipeline_contract::Timestamp;
use pipeline_contract::access::Refused;
use pipeline_contract::dlq::{DlqHeaderError, DlqHeaders, ErrorClass, UnknownErrorClass, header};
use pipeline_contract::kafka_client;
use pipeline_contract::kafka_client::Refusals;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::FutureProducer;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tokio::sync::mpsc;

use crate::config::{DlqAction, DlqArgs, KafkaArgs, ReplayArgs};
use crate::record::ConsumedRecord;

/// Exit code of a replay that refused records (older than the horizon, no `--force`).
pub const EXIT_REFUSED: u8 = 3;

const MILLIS_PER_DAY: i64 = 24 * 60 * 60 * 1000;
/// Every `dlq-*` header starts with this.
const DLQ_HEADER_PREFIX: &str = "dlq-";

/// Which dead letters a replay re-drives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    /// Only these classes; every class when empty.
    pub classes: BTreeSet<ErrorClass>,
    /// Only DLQ offsets at least this (in every partition of the DLQ).
    pub from_offset: Option<i64>,
    /// Only DLQ offsets below this (in every partition of the DLQ).
    pub to_offset: Option<i64>,
    /// The tombstone horizon: a change older than this is refused without `force`.
    pub horizon_days: u32,
    /// Re-drive even what is older than the horizon.
    pub force: bool,
    /// The time the horizon counts back from.
    pub now: Timestamp,
}

/// What a replay does with one dead letter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Matches the filters and is recent enough: re-driven.
    Selected,
    /// Does not match the class or offset filters: left alone, not an error.
    Skipped,
    /// Matches the filters but is older than the tombstone horizon and `--force` was not given.
    Refused { reason: String },
}

impl Selection {
    /// The selection of `indexer dlq replay`'s flags; an unknown `--class` is an error.
    pub fn from_args(args: &ReplayArgs, now: Timestamp) -> Result<Self, UnknownErrorClass> {
        Ok(Self {
            classes: args
                .classes
                .iter()
                .map(|c| c.parse())
                .collect::<Result<_, _>>()?,
            from_offset: args.from_offset,
            to_offset: args.to_offset,
            horizon_days: args.horizon_days,
            force: args.force,
            now,
        })
    }

    /// Decides for one dead letter at `offset` of the DLQ. `changed_at` is the original event's
    /// `timestamp` header; without one, `dlq-first-failure` stands in for the change time.
    pub fn decide(&self, offset: i64, dlq: &DlqHeaders, changed_at: Option<Timestamp>) -> Verdict {
        let class_matches = self.classes.is_empty() || self.classes.contains(&dlq.error_class);
        let offset_matches = self.from_offset.is_none_or(|from| offset >= from)
            && self.to_offset.is_none_or(|to| offset < to);
        if !class_matches || !offset_matches {
            return Verdict::Skipped;
        }
        let (changed, source) = match changed_at {
            Some(t) => (t, "changed"),
            None => (dlq.first_failure, "no timestamp header; first failed"),
        };
        let cutoff = self
            .now
            .timestamp_millis()
            .saturating_sub(i64::from(self.horizon_days) * MILLIS_PER_DAY);
        if changed.timestamp_millis() < cutoff && !self.force {
            let cutoff = Timestamp::from_millis(cutoff)
                .map_or_else(|| cutoff.to_string(), |t| t.to_string());
            return Verdict::Refused {
                reason: format!(
                    "{source} at {changed}, older than the {}-day tombstone horizon (before {cutoff}): \
                     it could resurrect a purged delete; --force re-drives it anyway",
                    self.horizon_days
                ),
            };
        }
        Verdict::Selected
    }
}

/// The DLQ headers of a dead letter.
pub fn dlq_headers(record: &ConsumedRecord) -> Result<DlqHeaders, DlqHeaderError> {
    DlqHeaders::parse(
        record
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_deref())),
    )
}

/// The original event's change time: its `timestamp` header, when present and readable.
pub fn change_time(record: &ConsumedRecord) -> Option<Timestamp> {
    record
        .header(pipeline_contract::kafka::header::TIMESTAMP)
        .and_then(|t| t.parse().ok())
}

/// The headers of a re-driven record: the original ones without any `dlq-*` header, then
/// `dlq-redrive-count` = `previous` + 1 (so a record that fails again keeps its count).
pub fn redrive_headers(
    headers: &[(String, Option<Vec<u8>>)],
    previous: u32,
) -> Vec<(String, Option<Vec<u8>>)> {
    let mut out: Vec<_> = headers
        .iter()
        .filter(|(name, _)| !name.starts_with(DLQ_HEADER_PREFIX))
        .cloned()
        .collect();
    out.push((
        header::REDRIVE_COUNT.to_owned(),
        Some(previous.saturating_add(1).to_string().into_bytes()),
    ));
    out
}

/// One class of dead letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClassSummary {
    pub count: u64,
    /// The earliest `dlq-first-failure`.
    pub oldest: Timestamp,
    /// The latest `dlq-first-failure`.
    pub newest: Timestamp,
}

impl ClassSummary {
    fn new(at: Timestamp) -> Self {
        Self {
            count: 1,
            oldest: at,
            newest: at,
        }
    }

    fn add(&mut self, at: Timestamp) {
        self.count += 1;
        self.oldest = self.oldest.min(at);
        self.newest = self.newest.max(at);
    }
}

/// What `indexer dlq inspect` reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inspection {
    pub classes: BTreeMap<ErrorClass, ClassSummary>,
    /// Every record read, readable or not.
    pub total: u64,
    /// Records without valid DLQ headers.
    pub unreadable: u64,
}

impl Inspection {
    /// Counts one DLQ record; one without valid DLQ headers counts as unreadable.
    pub fn add(&mut self, record: &ConsumedRecord) {
        self.total += 1;
        match dlq_headers(record) {
            Ok(dlq) => {
                self.classes
                    .entry(dlq.error_class)
                    .and_modify(|s| s.add(dlq.first_failure))
                    .or_insert_with(|| ClassSummary::new(dlq.first_failure));
            }
            Err(_) => self.unreadable += 1,
        }
    }

    /// The oldest and newest first failure over every readable record.
    pub fn span(&self) -> Option<(Timestamp, Timestamp)> {
        let oldest = self.classes.values().map(|s| s.oldest).min()?;
        let newest = self.classes.values().map(|s| s.newest).max()?;
        Some((oldest, newest))
    }

    /// The table `inspect` prints.
    pub fn render(&self, dlq_topic: &str) -> String {
        let mut out = format!("DLQ {dlq_topic}\n");
        let mut row = |class: &str, count: &str, oldest: &str, newest: &str| {
            let _ = writeln!(out, "{class:<18} {count:>8}  {oldest:<24}  {newest}");
        };
        row("class", "count", "oldest", "newest");
        for (class, s) in &self.classes {
            row(
                class.as_str(),
                &s.count.to_string(),
                &s.oldest.to_string(),
                &s.newest.to_string(),
            );
        }
        let (oldest, newest) = self.span().map_or_else(
            || ("-".to_owned(), "-".to_owned()),
            |(o, n)| (o.to_string(), n.to_string()),
        );
        row("total", &self.total.to_string(), &oldest, &newest);
        let _ = writeln!(
            out,
            "unreadable: {} (records without valid DLQ headers; counted in the total)",
            self.unreadable
        );
        out
    }
}

/// What a replay did with one class.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClassReplay {
    pub redriven: u64,
    pub skipped: u64,
    pub refused: u64,
    /// Where and why the first record of this class was refused.
    pub first_refusal: Option<String>,
}

/// What `indexer dlq replay` reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplaySummary {
    pub classes: BTreeMap<ErrorClass, ClassReplay>,
    /// Records without valid DLQ headers: never re-driven.
    pub unreadable: u64,
    /// Nothing was sent.
    pub dry_run: bool,
}

impl ReplaySummary {
    /// Counts one decision about the dead letter at `partition`/`offset`.
    pub fn add(&mut self, class: ErrorClass, partition: i32, offset: i64, verdict: &Verdict) {
        let c = self.classes.entry(class).or_default();
        match verdict {
            Verdict::Selected => c.redriven += 1,
            Verdict::Skipped => c.skipped += 1,
            Verdict::Refused { reason } => {
                c.refused += 1;
                if c.first_refusal.is_none() {
                    c.first_refusal =
                        Some(format!("partition {partition} offset {offset}: {reason}"));
                }
            }
        }
    }

    pub fn redriven(&self) -> u64 {
        self.classes.values().map(|c| c.redriven).sum()
    }

    pub fn skipped(&self) -> u64 {
        self.classes.values().map(|c| c.skipped).sum()
    }

    pub fn refused(&self) -> u64 {
        self.classes.values().map(|c| c.refused).sum()
    }

    /// 0, or [`EXIT_REFUSED`] when anything was refused, so a script notices.
    pub fn exit_code(&self) -> u8 {
        if self.refused() > 0 { EXIT_REFUSED } else { 0 }
    }

    /// The summary `replay` prints.
    pub fn render(&self, dlq_topic: &str, topic: &str) -> String {
        let verb = if self.dry_run {
            "would re-drive"
        } else {
            "re-drove"
        };
        let mut out = format!(
            "DLQ {dlq_topic} -> {topic}{}\n",
            if self.dry_run {
                " (dry run: nothing sent)"
            } else {
                ""
            }
        );
        let _ = writeln!(
            out,
            "{:<18} {:>9} {:>8} {:>8}",
            "class", "re-driven", "skipped", "refused"
        );
        for (class, c) in &self.classes {
            let _ = writeln!(
                out,
                "{:<18} {:>9} {:>8} {:>8}",
                class.as_str(),
                c.redriven,
                c.skipped,
                c.refused
            );
        }
        let _ = writeln!(
            out,
            "{:<18} {:>9} {:>8} {:>8}",
            "total",
            self.redriven(),
            self.skipped(),
            self.refused()
        );
        for (class, c) in &self.classes {
            if let Some(reason) = &c.first_refusal {
                let _ = writeln!(out, "first refusal of {class}: {reason}");
            }
        }
        if self.unreadable > 0 {
            let _ = writeln!(
                out,
                "unreadable: {} (records without valid DLQ headers; never re-driven)",
                self.unreadable
            );
        }
        let _ = writeln!(
            out,
            "{verb} {} record(s). Re-driven records stay in the DLQ: Kafka cannot delete single records, \
             so re-running this selects them again. That is harmless: events carry external versions, \
             and a version the index already holds is not applied twice; a record that still fails is \
             dead-lettered again with its dlq-redrive-count.",
            self.redriven()
        );
        out
    }
}

/// A failure of `inspect` or `replay`.
#[derive(Debug, thiserror::Error)]
pub enum DlqToolError {
    #[error(transparent)]
    Class(#[from] UnknownErrorClass),
    #[error("Kafka client: {0}")]
    Client(#[source] KafkaError),
    #[error("topic {topic}: {problem}")]
    Topic { topic: String, problem: String },
    #[error("reading {topic} stalled for {stalled:?}: {partitions}")]
    Stalled {
        topic: String,
        stalled: Duration,
        partitions: String,
    },
    #[error(
        "producing DLQ partition {partition} offset {offset} to {topic}: {error} \
         ({redriven} record(s) re-driven before; re-running is safe)"
    )]
    Produce {
        topic: String,
        partition: i32,
        offset: i64,
        error: KafkaError,
        redriven: u64,
    },
    #[error("the DLQ reader stopped unexpectedly: {0}")]
    Reader(String),
    /// Kafka refused the tool's credentials, CA or principal (run it as the replay principal).
    #[error("{0}")]
    Refused(Refused),
}

/// Reads a topic from the beginning of every partition (or from given offsets) up to the high
/// watermarks taken when the read starts; records are handed over through a bounded channel as
/// they arrive.
#[derive(Debug)]
pub struct TopicReader {
    records: mpsc::Receiver<ConsumedRecord>,
    task: tokio::task::JoinHandle<Result<Offsets, DlqToolError>>,
}

/// An offset per partition.
pub type Offsets = BTreeMap<i32, i64>;

/// How long a read may go without progress before it gives up.
const STALL_LIMIT: Duration = Duration::from_secs(30);
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

impl TopicReader {
    /// Starts reading `topic` with the shared client settings in `config` (no group: the
    /// partitions are assigned, nothing is committed).
    pub fn open(config: ClientConfig, topic: String) -> Self {
        Self::open_from(config, topic, Offsets::new())
    }

    /// As [`Self::open`], each partition in `from` read from its offset there.
    pub fn open_from(config: ClientConfig, topic: String, from: Offsets) -> Self {
        let (tx, records) = mpsc::channel(256);
        let task = tokio::task::spawn_blocking(move || read_blocking(config, &topic, &from, &tx));
        Self { records, task }
    }

    /// The next record; `None` once the end is reached or the read failed (see [`Self::finish`]).
    pub async fn next(&mut self) -> Option<ConsumedRecord> {
        self.records.recv().await
    }

    /// Whether the read reached the end, or why not; the end of every partition it read to.
    pub async fn finish(self) -> Result<Offsets, DlqToolError> {
        drop(self.records);
        self.task
            .await
            .map_err(|e| DlqToolError::Reader(e.to_string()))?
    }
}

fn read_blocking(
    mut config: ClientConfig,
    topic: &str,
    from: &Offsets,
    tx: &mpsc::Sender<ConsumedRecord>,
) -> Result<Offsets, DlqToolError> {
    // librdkafka's assign needs a group id; this one is never joined (no subscribe) and nothing is
    // committed under it. It is named after the topic (`<topic>.reader-<random>`), so a
    // least-privilege principal needs Read on groups prefixed with the DLQ's name, nothing wider.
    let refusals = Refusals::new(config.get("bootstrap.servers").unwrap_or_default());
    let consumer: BaseConsumer<Refusals> = config
        .set(
            "group.id",
            format!("{topic}.reader-{}", uuid::Uuid::new_v4().simple()),
        )
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .create_with_context(refusals)
        .map_err(DlqToolError::Client)?;
    let result = read_partitions(&consumer, topic, from, tx);
    // Nothing the client returned outlives this point, so dropping the consumer cannot block.
    consumer.unassign().ok();
    drop(consumer);
    result
}

/// Sends every record of `topic`'s partitions (from `from` where given) up to their high
/// watermarks at the start; returns those.
fn read_partitions(
    consumer: &BaseConsumer<Refusals>,
    topic: &str,
    from: &Offsets,
    tx: &mpsc::Sender<ConsumedRecord>,
) -> Result<Offsets, DlqToolError> {
    let (mut remaining, ends) = assign_to_ends(consumer, topic, from)?;
    let mut last_progress = std::time::Instant::now();
    while !remaining.is_empty() {
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(message)) => {
                last_progress = std::time::Instant::now();
                let record = ConsumedRecord::from_message(&message);
                drop(message);
                let Some(&high) = remaining.get(&record.partition) else {
                    // A partition already read to its end: what arrived since is not ours.
                    continue;
                };
                if record.offset >= high {
                    remaining.remove(&record.partition);
                    continue;
                }
                let partition = record.partition;
                let done = record.offset + 1 >= high;
                if tx.blocking_send(record).is_err() {
                    // The receiver gave up (its caller failed); nothing more to do.
                    return Ok(ends);
                }
                if done {
                    remaining.remove(&partition);
                }
            }
            // A refusal is final (below); anything else may pass.
            Some(Err(error)) if !consumer.context().observe_error(&error) => {
                tracing::warn!(topic, %error, "reading the topic; retrying");
            }
            Some(Err(_)) | None => {}
        }
        if let Some(refused) = consumer.context().current() {
            return Err(DlqToolError::Refused(refused));
        }
        drop_read_to_end(consumer, topic, &mut remaining)?;
        if !remaining.is_empty() && last_progress.elapsed() > STALL_LIMIT {
            return Err(DlqToolError::Stalled {
                topic: topic.to_owned(),
                stalled: STALL_LIMIT,
                partitions: remaining
                    .iter()
                    .map(|(p, high)| format!("partition {p} not read up to offset {high}"))
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
    }
    Ok(ends)
}

/// Assigns `consumer` the partitions of `topic` that have records after where their read
/// starts (`from`, or their beginning); returns those partitions' high watermarks now, where
/// their read ends, and every partition's.
fn assign_to_ends(
    consumer: &BaseConsumer<Refusals>,
    topic: &str,
    from: &Offsets,
) -> Result<(Offsets, Offsets), DlqToolError> {
    let topic_error = |problem: String| DlqToolError::Topic {
        topic: topic.to_owned(),
        problem,
    };
    let metadata = consumer
        .fetch_metadata(Some(topic), METADATA_TIMEOUT)
        .map_err(DlqToolError::Client)?;
    let Some(t) = metadata.topics().iter().find(|t| t.name() == topic) else {
        return Err(topic_error("not in the cluster's metadata".into()));
    };
    if let Some(error) = t.error() {
        return Err(topic_error(
            rdkafka::error::RDKafkaErrorCode::from(error).to_string(),
        ));
    }
    if t.partitions().is_empty() {
        return Err(topic_error("has no partitions (does it exist?)".into()));
    }
    let (mut remaining, mut ends) = (Offsets::new(), Offsets::new());
    let mut assignment = TopicPartitionList::new();
    for p in t.partitions().iter().map(|p| p.id()) {
        let (low, high) = consumer
            .fetch_watermarks(topic, p, METADATA_TIMEOUT)
            .map_err(DlqToolError::Client)?;
        ends.insert(p, high);
        let start = from.get(&p).copied().unwrap_or(low).max(low);
        if high > start {
            remaining.insert(p, high);
            assignment
                .add_partition_offset(topic, p, Offset::Offset(start))
                .map_err(DlqToolError::Client)?;
        }
    }
    if !remaining.is_empty() {
        consumer.assign(&assignment).map_err(DlqToolError::Client)?;
    }
    Ok((remaining, ends))
}

/// Drops from `remaining` the partitions whose position reached their end: offsets without a
/// record (transaction markers, compaction) still move the position.
fn drop_read_to_end(
    consumer: &BaseConsumer<Refusals>,
    topic: &str,
    remaining: &mut BTreeMap<i32, i64>,
) -> Result<(), DlqToolError> {
    let position = consumer.position().map_err(DlqToolError::Client)?;
    for elem in position.elements_for_topic(topic) {
        if let Offset::Offset(at) = elem.offset()
            && remaining
                .get(&elem.partition())
                .is_some_and(|high| at >= *high)
        {
            remaining.remove(&elem.partition());
        }
    }
    Ok(())
}

/// Reads the whole DLQ and summarizes it.
pub async fn inspect(kafka: &KafkaArgs) -> Result<Inspection, DlqToolError> {
    let mut reader = TopicReader::open(kafka.connection.client_config(), kafka.dlq_topic());
    let mut inspection = Inspection::default();
    while let Some(record) = reader.next().await {
        inspection.add(&record);
    }
    reader.finish().await?;
    Ok(inspection)
}

/// Re-drives the selected dead letters to the events topic, each send awaited (idempotent
/// producer, acks=all); with `dry_run`, decides and counts but sends nothing.
pub async fn replay(
    kafka: &KafkaArgs,
    selection: &Selection,
    dry_run: bool,
) -> Result<ReplaySummary, DlqToolError> {
    let producer: Option<FutureProducer> = if dry_run {
        None
    } else {
        Some(
            kafka_client::idempotent(kafka.connection.client_config())
                .set("message.timeout.ms", "30000")
                .create()
                .map_err(DlqToolError::Client)?,
        )
    };
    let mut summary = ReplaySummary {
        dry_run,
        ..ReplaySummary::default()
    };
    let mut reader = TopicReader::open(kafka.connection.client_config(), kafka.dlq_topic());
    while let Some(record) = reader.next().await {
        let Ok(dlq) = dlq_headers(&record) else {
            summary.unreadable += 1;
            continue;
        };
        let verdict = selection.decide(record.offset, &dlq, change_time(&record));
        if let (Verdict::Selected, Some(producer)) = (&verdict, &producer) {
            redrive(producer, &kafka.topic, &record, dlq.redrive_count)
                .await
                .map_err(|error| DlqToolError::Produce {
                    topic: kafka.topic.clone(),
                    partition: record.partition,
                    offset: record.offset,
                    error,
                    redriven: summary.redriven(),
                })?;
        }
        summary.add(dlq.error_class, record.partition, record.offset, &verdict);
    }
    reader.finish().await?;
    Ok(summary)
}

async fn redrive(
    producer: &FutureProducer,
    topic: &str,
    record: &ConsumedRecord,
    previous: u32,
) -> Result<(), KafkaError> {
    let adjusted = redrive_headers(&record.headers, previous);
    let headers = kafka_client::headers(
        adjusted
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_deref())),
    );
    let out = kafka_client::record(
        topic,
        record.key.as_deref(),
        record.payload.as_deref(),
        headers,
    );
    producer
        .send(out, Duration::from_secs(5))
        .await
        .map(|_| ())
        .map_err(|(error, _)| error)
}

/// Runs `indexer dlq …`: prints the table or the summary, returns the exit code.
pub async fn run(args: &DlqArgs) -> Result<u8, DlqToolError> {
    let dlq_topic = args.kafka.dlq_topic();
    match &args.action {
        DlqAction::Inspect => {
            let inspection = inspect(&args.kafka).await?;
            print!("{}", inspection.render(&dlq_topic));
            Ok(0)
        }
        DlqAction::Replay(replay_args) => {
            let selection = Selection::from_args(replay_args, Timestamp::now())?;
            let summary = replay(&args.kafka, &selection, replay_args.dry_run).await?;
            print!("{}", summary.render(&dlq_topic, &args.kafka.topic));
            Ok(summary.exit_code())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    fn dead(class: ErrorClass, first_failure: &str, redrive_count: u32) -> DlqHeaders {
        DlqHeaders {
            source_topic: "events".into(),
            source_partition: 0,
            source_offset: 7,
            error_class: class,
            error_message: "boom".into(),
            attempts: 1,
            first_failure: at(first_failure),
            redrive_count,
        }
    }

    fn record(offset: i64, headers: &[(&str, &str)]) -> ConsumedRecord {
        ConsumedRecord {
            partition: 0,
            offset,
            key: Some(b"k".to_vec()),
            payload: Some(b"v".to_vec()),
            headers: headers
                .iter()
                .map(|(n, v)| ((*n).to_owned(), Some(v.as_bytes().to_vec())))
                .collect(),
        }
    }

    fn dead_record(offset: i64, dlq: &DlqHeaders) -> ConsumedRecord {
        let pairs: Vec<_> = dlq.pairs();
        let mut r = record(offset, &[("message-id", "m:1")]);
        r.headers.extend(
            pairs
                .into_iter()
                .map(|(n, v)| (n.to_owned(), Some(v.into_bytes()))),
        );
        r
    }

    const NOW: &str = "2026-11-27T12:00:00.000Z";

    fn selection() -> Selection {
        Selection {
            classes: BTreeSet::new(),
            from_offset: None,
            to_offset: None,
            horizon_days: 21,
            force: false,
            now: at(NOW),
        }
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Expect {
        Sel,
        Skip,
        Refuse,
    }

    /// (what, selection, DLQ offset, class, first failure, `timestamp` header, expected verdict)
    type DecideCase<'a> = (
        &'a str,
        &'a Selection,
        i64,
        ErrorClass,
        &'a str,
        Option<&'a str>,
        Expect,
    );

    #[test]
    fn decide_filters_then_applies_the_horizon() {
        use ErrorClass::{MappingRejected as M, RetriesExhausted as R};
        use Expect::{Refuse, Sel, Skip};
        const NEW: &str = "2026-11-27T11:00:00.000Z";
        const OLD: &str = "2026-11-01T00:00:00.000Z"; // 26 days before NOW
        const EDGE: &str = "2026-11-06T12:00:00.000Z"; // exactly 21 days before NOW
        let all = selection();
        let retries = Selection {
            classes: BTreeSet::from([R]),
            ..selection()
        };
        let window = Selection {
            from_offset: Some(10),
            to_offset: Some(20),
            ..selection()
        };
        let forced = Selection {
            force: true,
            ..selection()
        };
        let cases: &[DecideCase<'_>] = &[
            ("no filter, recent", &all, 0, M, NEW, Some(NEW), Sel),
            ("class matches", &retries, 0, R, NEW, Some(NEW), Sel),
            ("class differs", &retries, 0, M, NEW, Some(NEW), Skip),
            ("below the window", &window, 9, M, NEW, Some(NEW), Skip),
            (
                "window start is inclusive",
                &window,
                10,
                M,
                NEW,
                Some(NEW),
                Sel,
            ),
            (
                "window end is exclusive",
                &window,
                20,
                M,
                NEW,
                Some(NEW),
                Skip,
            ),
            ("old change is refused", &all, 0, M, NEW, Some(OLD), Refuse),
            (
                "exactly at the horizon is kept",
                &all,
                0,
                M,
                NEW,
                Some(EDGE),
                Sel,
            ),
            (
                "old change with --force",
                &forced,
                0,
                M,
                NEW,
                Some(OLD),
                Sel,
            ),
            (
                "no timestamp: old first failure",
                &all,
                0,
                M,
                OLD,
                None,
                Refuse,
            ),
            (
                "no timestamp: recent first failure",
                &all,
                0,
                M,
                NEW,
                None,
                Sel,
            ),
            (
                "filters come before the horizon",
                &retries,
                0,
                M,
                OLD,
                Some(OLD),
                Skip,
            ),
        ];
        for &(what, sel, offset, class, first_failure, changed, expected) in cases {
            let verdict = sel.decide(offset, &dead(class, first_failure, 0), changed.map(at));
            let got = match verdict {
                Verdict::Selected => Sel,
                Verdict::Skipped => Skip,
                Verdict::Refused { .. } => Refuse,
            };
            assert_eq!(got, expected, "{what}");
        }
    }

    #[test]
    fn refusal_reason_names_the_time_and_the_way_out() {
        let Verdict::Refused { reason } = selection().decide(
            0,
            &dead(ErrorClass::RetriesExhausted, "2026-10-01T00:00:00Z", 0),
            None,
        ) else {
            panic!("should be refused");
        };
        assert!(reason.contains("2026-10-01T00:00:00.000Z"), "{reason}");
        assert!(reason.contains("21-day"), "{reason}");
        assert!(reason.contains("--force"), "{reason}");
        assert!(reason.contains("no timestamp header"), "{reason}");
    }

    #[test]
    fn selection_from_args_rejects_unknown_classes() {
        let mut args = ReplayArgs {
            classes: vec!["retries-exhausted".into(), "mapping-rejected".into()],
            from_offset: Some(3),
            to_offset: None,
            force: false,
            horizon_days: 7,
            dry_run: false,
        };
        let sel = Selection::from_args(&args, at(NOW)).unwrap();
        assert_eq!(
            sel.classes,
            BTreeSet::from([ErrorClass::RetriesExhausted, ErrorClass::MappingRejected])
        );
        assert_eq!((sel.from_offset, sel.horizon_days), (Some(3), 7));
        args.classes.push("timeout".into());
        assert!(Selection::from_args(&args, at(NOW)).is_err());
    }

    /// (what, original headers, previous count, expected headers)
    type RedriveCase<'a> = (
        &'a str,
        Vec<(&'a str, &'a str)>,
        u32,
        Vec<(&'a str, &'a str)>,
    );

    #[test]
    fn redrive_headers_drop_dlq_headers_and_count_the_redrive() {
        let owned = |pairs: &[(&str, &str)]| -> Vec<(String, Option<Vec<u8>>)> {
            pairs
                .iter()
                .map(|(n, v)| ((*n).to_owned(), Some(v.as_bytes().to_vec())))
                .collect()
        };
        let cases: [RedriveCase<'_>; 3] = [
            (
                "first redrive",
                vec![
                    ("message-id", "m:1"),
                    ("timestamp", NOW),
                    ("dlq-error-class", "retries-exhausted"),
                    ("dlq-first-failure", NOW),
                ],
                0,
                vec![
                    ("message-id", "m:1"),
                    ("timestamp", NOW),
                    ("dlq-redrive-count", "1"),
                ],
            ),
            (
                "earlier count replaced, not repeated",
                vec![
                    ("dlq-redrive-count", "2"),
                    ("correlation-id", "c"),
                    ("dlq-source-offset", "9"),
                    ("dlq-something-new", "x"),
                ],
                2,
                vec![("correlation-id", "c"), ("dlq-redrive-count", "3")],
            ),
            (
                "no headers at all",
                vec![],
                0,
                vec![("dlq-redrive-count", "1")],
            ),
        ];
        for (what, input, previous, expected) in cases {
            assert_eq!(
                redrive_headers(&owned(&input), previous),
                owned(&expected),
                "{what}"
            );
        }
    }

    #[test]
    fn inspection_counts_classes_spans_and_unreadable_records() {
        use ErrorClass::{MappingRejected, Undecodable};
        let records = [
            dead_record(0, &dead(Undecodable, "2026-11-20T00:00:00Z", 0)),
            dead_record(1, &dead(MappingRejected, "2026-11-22T00:00:00Z", 0)),
            dead_record(2, &dead(Undecodable, "2026-11-18T00:00:00Z", 1)),
            dead_record(3, &dead(Undecodable, "2026-11-25T00:00:00Z", 0)),
            record(4, &[("message-id", "m:1")]),
            record(5, &[("dlq-error-class", "timeout")]),
        ];
        let mut inspection = Inspection::default();
        for r in &records {
            inspection.add(r);
        }
        assert_eq!(inspection.total, 6);
        assert_eq!(inspection.unreadable, 2);
        assert_eq!(
            inspection.classes[&Undecodable],
            ClassSummary {
                count: 3,
                oldest: at("2026-11-18T00:00:00Z"),
                newest: at("2026-11-25T00:00:00Z"),
            }
        );
        assert_eq!(inspection.classes[&MappingRejected].count, 1);
        assert_eq!(
            inspection.span(),
            Some((at("2026-11-18T00:00:00Z"), at("2026-11-25T00:00:00Z")))
        );
        let table = inspection.render("events.dlq");
        assert!(table.contains("undecodable"), "{table}");
        assert!(table.contains("unreadable: 2"), "{table}");
        assert_eq!(Inspection::default().span(), None);
        assert!(Inspection::default().render("e.dlq").contains("total"));
    }

    #[test]
    fn replay_summary_counts_and_exits_3_on_refusals() {
        use ErrorClass::{MappingRejected, RetriesExhausted};
        let refused = Verdict::Refused {
            reason: "too old".into(),
        };
        let mut summary = ReplaySummary::default();
        summary.add(RetriesExhausted, 0, 1, &Verdict::Selected);
        summary.add(MappingRejected, 0, 2, &Verdict::Skipped);
        assert_eq!(summary.exit_code(), 0);
        summary.add(RetriesExhausted, 0, 3, &refused);
        summary.add(
            RetriesExhausted,
            1,
            4,
            &Verdict::Refused {
                reason: "second".into(),
            },
        );
        assert_eq!(
            (summary.redriven(), summary.skipped(), summary.refused()),
            (1, 1, 2)
        );
        assert_eq!(summary.exit_code(), EXIT_REFUSED);
        assert_eq!(
            summary.classes[&RetriesExhausted].first_refusal.as_deref(),
            Some("partition 0 offset 3: too old")
        );
        let text = summary.render("e.dlq", "e");
        assert!(
            text.contains("first refusal of retries-exhausted"),
            "{text}"
        );
        assert!(text.contains("stay in the DLQ"), "{text}");
        assert!(!text.contains("dry run"), "{text}");
        let dry = ReplaySummary {
            dry_run: true,
            ..summary
        };
        assert!(dry.render("e.dlq", "e").contains("dry run: nothing sent"));
    }
}

//! The relay: publishes every acknowledged change to Kafka, loses none, and survives a Kafka
//! outage without failing a single API write (ARCHITECTURE.md, Relay; property 1).
//!
//! One task. It sends what the [`Outbox`] holds through an idempotent producer (`acks=all`),
//! marks records published only when Kafka acknowledged them, pages through MongoDB when the
//! outbox asks for a scan (after a write whose outcome was unknown, when memory was full), and
//! once a second persists this process's registration (watermark and heartbeat) and looks at
//! its peers' (module `replicas`): the changes of a peer presumed dead are adopted, scanned from
//! its watermark minus the overlap and published here. A failed send is retried after a pause;
//! while Kafka is away the records wait in memory up to `--relay-max-pending`, beyond that in
//! MongoDB itself.
//!
//! It never writes message documents and never decides what a change is: the service writes,
//! the outbox keeps the books, `replicas` decides whom to adopt.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use pipeline_contract::kafka_client::Refusals;
use pipeline_contract::time::Timestamp;
use pipeline_contract::worker::lease::RelayBacklog;
use pipeline_contract::{kafka, kafka_client, telemetry};
use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, Producer};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{KafkaArgs, RelayArgs};
use crate::metrics::Metrics;
use crate::outbox::{Outbox, PendingKey};
use crate::replicas::{Peers, Plan, Registration};
use crate::store::{After, Store, StoredMessage};

/// Records handed to the producer at once (its own queue holds more; this bounds memory).
const MAX_SENDING: usize = 4096;
/// Pause after a failed send before the next attempt.
const RETRY_PAUSE: Duration = Duration::from_secs(1);
/// How long the relay lets new changes gather after a wake-up before sending them.
const GATHER: Duration = Duration::from_millis(20);
/// How often the registration is persisted and the peers looked at.
const HOUSEKEEPING: Duration = Duration::from_secs(1);
/// Longest wait on shutdown for the outbox to drain.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(10);

/// The producer as the relay needs it, recording the refusals its connections meet with
/// `refusals`.
pub fn producer(
    kafka: &KafkaArgs,
    relay: &RelayArgs,
    refusals: &Refusals,
) -> Result<FutureProducer<Refusals>, KafkaError> {
    let mut config: ClientConfig = kafka_client::idempotent(kafka.connection.client_config());
    config
        // The relay gathers changes itself (GATHER); records are small and the broker would
        // spend CPU decompressing batches to validate them, so no compression.
        .set("linger.ms", "5")
        .set(
            "message.timeout.ms",
            relay.relay_message_timeout_ms.to_string(),
        )
        // The outbox bounds what is queued; keep librdkafka's own buffer small to match.
        .set("queue.buffering.max.kbytes", "16384");
    config.create_with_context(refusals.clone())
}

/// The relay's record of refusals: its Kafka endpoint, into the api-server's log.
pub fn refusals(kafka: &KafkaArgs, metrics: &Metrics) -> Refusals {
    Refusals::into_log(
        &kafka.connection.bootstrap_servers,
        metrics.refusals.clone(),
    )
}

#[derive(Debug)]
pub struct Relay {
    pub outbox: Arc<Outbox>,
    pub store: Store,
    pub kafka: KafkaArgs,
    pub args: RelayArgs,
    pub metrics: Arc<Metrics>,
    /// This process's registration id (unique per process) and name among its peers.
    pub id: String,
    pub pod: String,
}

type Delivery = (PendingKey, Result<(), KafkaError>);
/// Records handed to the producer whose acknowledgement is awaited.
type Sending = FuturesUnordered<futures::future::BoxFuture<'static, Delivery>>;

/// Whether a scan step left pages to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scanned {
    More,
    Done,
}

/// The producer and how sending goes.
struct Link {
    producer: FutureProducer<Refusals>,
    /// What the producer's context records into; delivery failures are recorded here too.
    refusals: Refusals,
    /// No sends before this (a pause after a failure).
    resend_after: Instant,
    /// Since when every delivery failed (`None` after a success).
    failing_since: Option<Instant>,
}

/// The adoption of dead peers' registrations under way.
#[derive(Debug)]
struct Adoption {
    registrations: Vec<Registration>,
    cursor: After,
    /// The scan reached the end of the collection.
    complete: bool,
    /// The latest `updatedAt` the scan read: adoption is done when nothing at or before it is
    /// still waiting for Kafka.
    scanned_to: i64,
}

/// What the once-a-second housekeeping carries from one tick to the next.
#[derive(Debug)]
struct Books {
    peers: Peers,
    beat: i64,
    started_at: Timestamp,
    adoption: Option<Adoption>,
    /// The last plan's orphans (dead, not adopted yet) and their oldest watermark, for the lag.
    orphans: usize,
    oldest_orphan: Option<i64>,
    /// Warnings already given, so each is logged once per change.
    warned: (bool, bool, Vec<(String, String)>),
    heartbeat_failing: bool,
}

impl Relay {
    /// Runs until `shutdown`, then drains what it can within [`SHUTDOWN_FLUSH`] and removes its
    /// registration, or persists it when something is still owed (found again by whoever
    /// adopts it: the next process in this pod at once, a peer after the expiry).
    ///
    /// Each turn: housekeeping once it is due (between any two steps, so that no long scan can
    /// hold back the heartbeat: a peer would presume this process dead, and writes would
    /// stop), then [`Self::hand_over`], [`Self::scan`], and [`Self::wait`].
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), KafkaError> {
        let overlap = i64::try_from(self.args.overlap().as_millis()).unwrap_or(i64::MAX);
        let refusals = refusals(&self.kafka, &self.metrics);
        let mut link = Link {
            producer: producer(&self.kafka, &self.args, &refusals)?,
            refusals,
            resend_after: Instant::now(),
            failing_since: None,
        };
        let mut books = Books {
            peers: Peers::new(&self.id, &self.pod, self.args.replica_expiry()),
            beat: 0,
            started_at: Timestamp::now(),
            adoption: None,
            orphans: 0,
            oldest_orphan: None,
            warned: (false, false, Vec::new()),
            heartbeat_failing: false,
        };
        tracing::info!(registration = %self.id, pod = %self.pod, "relay starting: registering, then looking for dead peers' changes");
        // Writes wait for the first heartbeat (the outbox refuses them until it is vouched for).
        self.housekeep(&mut books, overlap).await;

        let mut sending = Sending::new();
        let mut next_housekeeping = Instant::now() + HOUSEKEEPING;
        let mut stop_by: Option<Instant> = None;
        loop {
            if Instant::now() >= next_housekeeping {
                self.housekeep(&mut books, overlap).await;
                next_housekeeping = Instant::now() + HOUSEKEEPING;
            }
            if stop_by.is_none() && shutdown.is_cancelled() {
                tracing::info!(
                    pending = self.outbox.snapshot().pending,
                    "relay draining before exit"
                );
                stop_by = Some(Instant::now() + SHUTDOWN_FLUSH);
            }
            self.hand_over(&mut link, &mut sending);
            // Not when stopping: whoever adopts this registration scans from its watermark
            // anyway.
            if stop_by.is_none() && self.scan(&mut books).await == Scanned::More {
                continue;
            }
            if let Some(deadline) = stop_by
                && (self.outbox.is_drained() || Instant::now() >= deadline)
            {
                break;
            }
            let stopping = stop_by.is_some();
            self.wait(
                &mut link,
                &mut sending,
                next_housekeeping,
                &shutdown,
                stopping,
            )
            .await;
        }
        // Whatever is still in flight is abandoned; the registration's watermark below it makes
        // whoever adopts it publish it again.
        drop(sending);
        self.stop(&mut books, &link).await;
        Ok(())
    }

    /// Hands unsent records to the producer, up to [`MAX_SENDING`] in flight (none while
    /// pausing after a failure).
    fn hand_over(&self, link: &mut Link, sending: &mut Sending) {
        if Instant::now() < link.resend_after || sending.len() >= MAX_SENDING {
            return;
        }
        for (key, record) in self.outbox.take_unsent(MAX_SENDING - sending.len()) {
            let span = if telemetry::exporting() {
                publish_span(&self.kafka.topic, &key, record.origin.as_deref())
            } else {
                tracing::Span::none()
            };
            let traceparent = telemetry::traceparent(&span);
            let headers = kafka_client::headers(
                record
                    .headers
                    .iter()
                    .map(|(name, value)| (*name, Some(value.as_str())))
                    .chain(
                        traceparent
                            .as_deref()
                            .map(|tp| (kafka::header::TRACEPARENT, Some(tp))),
                    ),
            );
            let future_record = kafka_client::record(
                &self.kafka.topic,
                Some(record.key.as_bytes()),
                Some(&record.payload),
                headers,
            );
            match link.producer.send_result(future_record) {
                Ok(delivery) => sending.push(Box::pin(async move {
                    let result = match delivery.await {
                        Ok(Ok(delivery)) => {
                            span.record("messaging.destination.partition.id", delivery.partition);
                            span.record("messaging.kafka.offset", delivery.offset);
                            Ok(())
                        }
                        Ok(Err((error, _))) => Err(error),
                        Err(_) => Err(KafkaError::Canceled),
                    };
                    if let Err(error) = &result {
                        span.record("otel.status_code", "ERROR");
                        span.record("error.type", tracing::field::display(error));
                    }
                    (key, result)
                })),
                Err((error, _)) => {
                    self.outbox.failed(key);
                    if !matches!(
                        error,
                        KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)
                    ) {
                        tracing::warn!(%error, "handing a record to the producer failed");
                        link.resend_after = Instant::now() + RETRY_PAUSE;
                    }
                    break;
                }
            }
        }
    }

    /// One page of the outbox's scan when one is wanted, else one page of an adoption when
    /// memory has room; [`Scanned::More`] when that scan has pages left.
    async fn scan(&self, books: &mut Books) -> Scanned {
        if let Some(from) = self.outbox.scan_cursor()
            && let Some((last, complete)) = self.scan_page(&from).await
        {
            self.outbox.scanned(&from, last, complete);
            if !complete {
                return Scanned::More;
            }
        }
        if let Some(job) = books.adoption.as_mut().filter(|j| !j.complete)
            && self.outbox.has_room_for_scan()
            && let Some((last, complete)) = self.scan_page(&job.cursor).await
        {
            if let Some(last) = last {
                job.scanned_to = job.scanned_to.max(last.millis);
                job.cursor = last;
            }
            job.complete = complete;
            if !complete {
                return Scanned::More;
            }
        }
        Scanned::Done
    }

    /// Waits for an acknowledgement (then takes every other one that is ready), a write, the
    /// end of a pause, housekeeping or shutdown.
    async fn wait(
        &self,
        link: &mut Link,
        sending: &mut Sending,
        next_housekeeping: Instant,
        shutdown: &CancellationToken,
        stopping: bool,
    ) {
        let pause = tokio::time::sleep_until(link.resend_after.max(Instant::now()));
        tokio::select! {
            Some((key, result)) = sending.next(), if !sending.is_empty() => {
                self.delivered(key, result, link);
                while let Some(Some((key, result))) = futures::FutureExt::now_or_never(sending.next()) {
                    self.delivered(key, result, link);
                }
            }
            () = self.outbox.wake.notified() => {
                // Let a burst of writes gather: one hand-over to the producer per window
                // instead of one wake-up per write (the writes are durable already).
                tokio::time::sleep(GATHER).await;
            }
            () = pause, if link.resend_after > Instant::now() => {}
            () = tokio::time::sleep_until(next_housekeeping) => {}
            // Noticed by the caller's next turn.
            () = shutdown.cancelled(), if !stopping => {}
        }
    }

    /// After the loop: owing nothing, the registration goes; otherwise it is persisted with its
    /// watermark for whoever adopts it.
    async fn stop(&self, books: &mut Books, link: &Link) {
        if self.outbox.owes_nothing() && books.adoption.is_none() {
            match self.store.deregister(&self.id).await {
                Ok(()) => tracing::info!("relay owes nothing: registration removed"),
                Err(error) => {
                    tracing::warn!(%error, "removing the relay registration failed; a peer will adopt it")
                }
            }
        } else {
            self.heartbeat(books).await;
            tracing::warn!(watermark = %millis_to_time(self.outbox.snapshot().watermark), "relay stopped owing changes: a restart in this pod, or a peer after the expiry, publishes them");
        }
        let _ = link.producer.flush(Duration::from_secs(1));
        tracing::info!(snapshot = ?self.outbox.snapshot(), "relay stopped");
    }

    fn delivered(&self, key: PendingKey, result: Result<(), KafkaError>, link: &mut Link) {
        match result {
            Ok(()) => {
                self.outbox.published(key);
                self.metrics.relay_published.inc();
                link.failing_since = None;
            }
            Err(error) => {
                self.outbox.failed(key);
                self.metrics.relay_failures.inc();
                // A topic ACL refuses each record, not the connection.
                link.refusals.observe_error(&error);
                // One line per burst of failures (an outage fails every record in flight).
                if link.resend_after <= Instant::now() {
                    tracing::warn!(%error, id = %key.id, version = key.version, pending = self.outbox.snapshot().pending, "publishing failed; retrying in 1 s");
                }
                link.resend_after = Instant::now() + RETRY_PAUSE;
                let failing_since = *link.failing_since.get_or_insert_with(Instant::now);
                let fatal = link.producer.client().fatal_error();
                // A producer can stay wedged after the broker returns (seen here: one of three
                // replicas timed out every record for minutes while the others recovered at
                // once); a fresh one costs nothing, the records wait in the outbox.
                let wedged = failing_since.elapsed() >= self.args.stuck_producer_after();
                if fatal.is_some() || wedged {
                    tracing::warn!(fatal = ?fatal, failing_for = ?failing_since.elapsed(), "replacing the Kafka producer");
                    match self::producer(&self.kafka, &self.args, &link.refusals) {
                        Ok(fresh) => {
                            link.producer = fresh;
                            link.failing_since = Some(Instant::now());
                        }
                        Err(error) => tracing::error!(%error, "creating a new producer failed"),
                    }
                }
            }
        }
    }

    /// One page of a scan from `from`: queues what is unpublished, returns where it ended and
    /// whether it was the last page (`None`: the read failed, retry later).
    async fn scan_page(&self, from: &After) -> Option<(Option<After>, bool)> {
        let docs = match self
            .store
            .changed_since(from, self.args.relay_scan_page)
            .await
        {
            Ok(docs) => docs,
            Err(error) => {
                tracing::warn!(%error, "relay scan failed; retrying");
                tokio::time::sleep(RETRY_PAUSE).await;
                return None;
            }
        };
        let complete =
            docs.len() < usize::try_from(self.args.relay_scan_page).unwrap_or(usize::MAX);
        let mut queued = 0u64;
        for doc in &docs {
            match self.outbox.recovered(doc) {
                Ok(true) => queued += 1,
                Ok(false) => {}
                Err(error) => {
                    // Nothing can publish it; skipping keeps every other change flowing. Loud,
                    // because it needs a human.
                    tracing::error!(%error, "skipping a corrupt message document");
                    self.metrics.relay_corrupt.inc();
                }
            }
        }
        self.metrics.relay_recovered.inc_by(queued);
        if queued > 0 {
            tracing::info!(queued, complete, "scan found unpublished changes");
        }
        let last = docs.last().map(|d: &StoredMessage| After {
            millis: d.updated_at.timestamp_millis(),
            id: d.id.clone(),
        });
        Some((last, complete))
    }

    /// Persists this process's registration; on success, vouches for writes for half the
    /// expiry from the moment the request left (before any peer can presume this process dead).
    async fn heartbeat(&self, books: &mut Books) {
        let sent = std::time::Instant::now();
        books.beat += 1;
        let me = Registration {
            id: self.id.clone(),
            pod: Some(self.pod.clone()),
            topic: Some(self.kafka.topic.clone()),
            millis: self
                .outbox
                .watermark(i64::try_from(self.args.overlap().as_millis() * 2).unwrap_or(i64::MAX)),
            beat: Some(books.beat),
            adopted: false,
            claimed_by: None,
        };
        match self.store.heartbeat(&me, books.started_at).await {
            Ok(()) => {
                self.outbox.vouch(sent + self.args.replica_expiry() / 2);
                if std::mem::take(&mut books.heartbeat_failing) {
                    tracing::info!("relay registration persisted again");
                }
            }
            Err(error) => {
                if !std::mem::replace(&mut books.heartbeat_failing, true) {
                    tracing::warn!(%error, "persisting the relay registration failed; writes stop when it is older than half the expiry");
                }
            }
        }
    }

    /// Once a second: heartbeat, peers, adoption, metrics.
    async fn housekeep(&self, books: &mut Books, overlap: i64) {
        self.heartbeat(books).await;
        match self.store.registrations().await {
            Ok(registrations) => {
                let plan = books.peers.observe(
                    &registrations,
                    &self.kafka.topic,
                    std::time::Instant::now(),
                );
                self.act_on(books, &plan, overlap).await;
            }
            Err(error) => tracing::warn!(%error, "reading the relay registrations failed"),
        }
        if let Some(job) = books.adoption.as_ref().filter(|j| j.complete)
            && self
                .outbox
                .oldest_pending_stamp()
                .is_none_or(|stamp| stamp > job.scanned_to)
        {
            for r in &job.registrations {
                match self.store.mark_adopted(&r.id, r.pulse(), &self.id).await {
                    Ok(true) => {
                        self.metrics.relay_adopted.inc();
                        tracing::info!(registration = %r.id, pod = ?r.pod, "adopted: every change it owed is on Kafka");
                    }
                    Ok(false) => {
                        tracing::info!(registration = %r.id, "not marked adopted: its owner is alive after all")
                    }
                    Err(error) => {
                        tracing::warn!(%error, registration = %r.id, "marking a registration adopted failed; it will be adopted again")
                    }
                }
            }
            books.adoption = None;
        }
        self.update_metrics(books);
    }

    async fn act_on(&self, books: &mut Books, plan: &Plan, overlap: i64) {
        if plan.legacy_writer != books.warned.0 && plan.legacy_writer {
            tracing::warn!(
                "an api-server of an older version shares this database: it raises the shared relay watermark and can lose changes if it dies while Kafka is away; finish the rolling update"
            );
        }
        if plan.same_pod_peer != books.warned.1 && plan.same_pod_peer {
            tracing::warn!(pod = %self.pod, "another live api-server uses this pod name (POD_NAME): give each process its own");
        }
        if plan.other_topics != books.warned.2 && !plan.other_topics.is_empty() {
            tracing::warn!(peers = ?plan.other_topics, topic = %self.kafka.topic, "live api-servers on this database relay to another topic; changes adopted from them are published to this process's topic");
        }
        books.warned = (
            plan.legacy_writer,
            plan.same_pod_peer,
            plan.other_topics.clone(),
        );
        for (id, pulse) in &plan.forget {
            if let Err(error) = self.store.forget(id, *pulse).await {
                tracing::warn!(%error, registration = %id, "deleting an adopted registration failed");
            }
        }
        books.orphans = plan.orphans;
        books.oldest_orphan = plan.oldest_orphan_millis;
        if books.adoption.is_none() && !plan.adopt.is_empty() {
            for r in &plan.adopt {
                if let Err(error) = self.store.claim(&r.id, &self.id).await {
                    tracing::debug!(%error, registration = %r.id, "claiming a registration failed");
                }
            }
            let from = plan.adopt.iter().map(|r| r.millis).min().unwrap_or(0);
            let from = from.saturating_sub(overlap);
            tracing::warn!(
                registrations = ?plan.adopt.iter().map(|r| (&r.id, &r.pod)).collect::<Vec<_>>(),
                from = %millis_to_time(from),
                "adopting the changes of api-servers presumed dead"
            );
            books.adoption = Some(Adoption {
                registrations: plan.adopt.clone(),
                cursor: After {
                    millis: from,
                    id: String::new(),
                },
                complete: false,
                scanned_to: from,
            });
            self.outbox.wake.notify_one();
        }
    }

    fn update_metrics(&self, books: &Books) {
        let now = Timestamp::now().timestamp_millis();
        let orphan_age = books
            .oldest_orphan
            .map_or(0, |m| now.saturating_sub(m).max(0));
        let lag = self.outbox.lag_millis().max(orphan_age);
        self.metrics.relay_lag_seconds.set(lag as f64 / 1000.0);
        let snapshot = self.outbox.snapshot();
        self.metrics
            .relay_pending
            .set(i64::try_from(snapshot.pending).unwrap_or(i64::MAX));
        for (age, count) in RelayBacklog::ALL
            .into_iter()
            .zip(self.outbox.pending_by_age(now))
        {
            self.metrics
                .relay_unpublished
                .get_or_create(&crate::metrics::AgeLabels {
                    age: age.as_str().to_owned(),
                })
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
        self.metrics
            .relay_orphans
            .set(i64::try_from(books.orphans).unwrap_or(i64::MAX));
    }
}

fn millis_to_time(millis: i64) -> Timestamp {
    Timestamp::from_millis(millis).unwrap_or_else(Timestamp::now)
}

/// The span of one attempt to publish a change: a child of the request that made it, or — for
/// a change a scan read back after a restart or an adoption — the root of a new trace marked
/// `recovered`, since the request's context did not survive. Its `traceparent` goes on the
/// record, so the indexer's consume span is its child.
fn publish_span(topic: &str, key: &PendingKey, origin: Option<&str>) -> tracing::Span {
    let span = tracing::info_span!(
        parent: None,
        "publish",
        otel.name = format!("{topic} publish"),
        otel.kind = "producer",
        otel.status_code = tracing::field::Empty,
        messaging.system = "kafka",
        messaging.operation.type = "send",
        messaging.destination.name = topic,
        messaging.destination.partition.id = tracing::field::Empty,
        messaging.kafka.offset = tracing::field::Empty,
        message.id = %key.id,
        message.version = key.version,
        recovered = origin.is_none(),
        error.type = tracing::field::Empty,
    );
    telemetry::set_parent(&span, origin);
    span
}

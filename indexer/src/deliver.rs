//! Makes one lane durable: its requests to the search engine, its dead letters, its backoffs.
//!
//! Each turn sends the dead letters first (awaited before anything after them can be
//! committed), then one bulk request of the items left, and applies the [`crate::verdict`] of the
//! answer: items move, the breaker hears what happened, the lane backs off. The lane stops,
//! `Stalled`, as soon as the breaker does not let it send (it opened, or it is not closed and
//! this lane is not the probe) or the indexer shuts down; what is not durable stays in it.

use std::sync::Arc;
use std::time::Instant;

use pipeline_contract::Timestamp;
use pipeline_contract::dlq::DlqHeaders;
use pipeline_contract::kafka::header;
use pipeline_contract::telemetry;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::breaker::Event;
use crate::classify::{ItemDecision, ItemResult, Partitioned, RequestOutcome, classify_item};
use crate::dlq::DlqWriter;
use crate::gate::Gate;
use crate::lane::{Item, Stalled, Work, body_of};
use crate::metrics::{ClassLabel, Metrics};
use crate::retry::RetryPolicy;
use crate::sink::SearchSink;
use crate::verdict::{Next, Verdict, judge};

/// What a lane needs to reach the engine and the DLQ.
pub(crate) struct Delivery {
    pub(crate) sink: SearchSink,
    pub(crate) dlq: DlqWriter,
    pub(crate) gate: Arc<Gate>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) retry: RetryPolicy,
    /// The events topic, named in each dead letter's headers.
    pub(crate) topic: String,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("topic", &self.topic)
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

impl Delivery {
    /// Makes `pending` durable: indexes what can be, dead-letters what cannot (awaited), retries
    /// item-level failures within the bound. Returns `Stalled` with the rest still in `pending`
    /// when the breaker stops it. Two versions of one message may travel in different lanes:
    /// external versions make the order they land in irrelevant. `prebuilt` is the body of all
    /// of `pending`, when it is at hand: the first request sends it as it is.
    pub(crate) async fn flush(
        &self,
        pending: &mut Vec<Item>,
        mut prebuilt: Option<Vec<u8>>,
        probe: bool,
        shutdown: &CancellationToken,
    ) -> Result<(), Stalled> {
        let started = Instant::now();
        let mut chunk = pending.len().max(1);
        loop {
            if !self.gate.may_send(probe, Instant::now()) {
                return Err(Stalled);
            }
            self.dead_letters(pending, shutdown).await?;
            if pending.is_empty() {
                self.metrics
                    .batch_seconds
                    .observe(started.elapsed().as_secs_f64());
                return Ok(());
            }
            let now = Instant::now();
            self.gate.record(&Event::TimePassed, now);
            if !self.gate.may_send(probe, now) {
                return Err(Stalled);
            }
            let take = chunk.min(pending.len());
            let Some(body) = self.body(pending, take, prebuilt.take()) else {
                // An item of this request became a dead letter: the next turn writes it.
                continue;
            };
            let span = bulk_span(&pending[..take]);
            let (outcome, results) = self.sink.bulk(body).instrument(span.clone()).await;
            record_outcome(&span, &outcome, &results);
            drop(span);
            let sent: Vec<Item> = pending.drain(..take).collect();
            let attempts: Vec<u32> = sent.iter().map(|i| i.attempts).collect();
            let verdict = judge(&outcome, results, &attempts, self.retry.max_attempts);
            let backoff = self.apply(verdict, sent, pending, &mut chunk);
            if let Some(attempt) = backoff {
                self.back_off(attempt, probe, shutdown).await?;
            }
        }
    }

    /// The body of the first `take` items: `prebuilt` when it covers exactly them, otherwise
    /// encoded again; `None` when an item no longer encodes (it is a dead letter now).
    fn body(
        &self,
        pending: &mut [Item],
        take: usize,
        prebuilt: Option<Vec<u8>>,
    ) -> Option<Vec<u8>> {
        match prebuilt {
            Some(body) if take == pending.len() => Some(body),
            _ => {
                let body = body_of(&mut pending[..take], self.sink.layout());
                let all_live = !pending[..take].iter().any(|i| i.work.is_dead_letter());
                all_live.then_some(body)
            }
        }
    }

    /// Applies `verdict` to the items `sent`, putting back in front of `pending` what is not
    /// durable, and tells the breaker; returns the backoff to wait, if any.
    fn apply(
        &self,
        verdict: Verdict,
        mut sent: Vec<Item>,
        pending: &mut Vec<Item>,
        chunk: &mut usize,
    ) -> Option<u32> {
        let Verdict {
            next,
            breaker,
            failure,
            backoff,
        } = verdict;
        match next {
            Next::Split { chunk: half } => {
                *chunk = half;
                pending.splice(0..0, sent);
            }
            Next::DeadLetterAll { class, message } => {
                for item in &mut sent {
                    item.work = Work::DeadLetter {
                        class,
                        message: message.clone(),
                    };
                    item.size = 0;
                }
                pending.splice(0..0, sent);
            }
            Next::Keep => {
                pending.splice(0..0, sent);
            }
            Next::Sorted(sorted) => {
                let again = self.sort(sent, sorted, failure.is_none());
                pending.splice(0..0, again);
            }
        }
        if let Some(failure) = &failure {
            self.metrics.breaker_failures.inc();
            tracing::warn!(%failure, items = pending.len(), "bulk request failed as a whole");
        }
        if let Some(event) = breaker {
            self.gate.record(&event, Instant::now());
        }
        backoff
    }

    /// The items of an answered request, each where its answer sends it: done ones counted (and
    /// their freshness observed), the rest returned to be sent again, in their order.
    fn sort(&self, sent: Vec<Item>, sorted: Partitioned<usize>, healthy: bool) -> Vec<Item> {
        let mut slots: Vec<Option<Item>> = sent
            .into_iter()
            .map(|mut item| {
                item.attempts += 1;
                Some(item)
            })
            .collect();
        let mut take = |i: usize| slots[i].take().expect("each item sorted once");
        let acked = Timestamp::now();
        for &i in &sorted.done {
            self.observe_freshness(&take(i), acked);
        }
        let newer = sorted.already_newer;
        self.metrics
            .indexed
            .inc_by((sorted.done.len() - newer) as u64);
        self.metrics.already_newer.inc_by(newer as u64);
        let mut again = Vec::new();
        for d in sorted.dead_letter {
            let mut item = take(d.item);
            item.work = Work::DeadLetter {
                class: d.class,
                message: d.message,
            };
            item.size = 0;
            again.push(item);
        }
        if healthy {
            self.metrics.retried.inc_by(sorted.retry.len() as u64);
        }
        for i in sorted.retry {
            let mut item = take(i);
            item.first_failure.get_or_insert_with(Timestamp::now);
            again.push(item);
        }
        again.extend(sorted.breaker.into_iter().map(|(i, _)| take(i)));
        again
    }

    /// How long after its change an indexed record became searchable, from its `timestamp`
    /// header.
    fn observe_freshness(&self, item: &Item, acked: Timestamp) {
        let changed = item
            .record
            .header(header::TIMESTAMP)
            .and_then(|t| t.parse::<Timestamp>().ok());
        if let Some(ts) = changed {
            let lag_ms = acked
                .timestamp_millis()
                .saturating_sub(ts.timestamp_millis())
                .max(0);
            self.metrics
                .freshness_seconds
                .observe(lag_ms as f64 / 1000.0);
        }
    }

    /// Waits out the backoff of `attempt`, unless the breaker no longer lets this lane send or
    /// the indexer shuts down: then the lane stops where it is.
    async fn back_off(
        &self,
        attempt: u32,
        probe: bool,
        shutdown: &CancellationToken,
    ) -> Result<(), Stalled> {
        if !self.gate.may_send(probe, Instant::now()) {
            return Err(Stalled);
        }
        let delay = self.retry.delay(attempt, fastrand::f64());
        tokio::select! {
            () = shutdown.cancelled() => Err(Stalled),
            () = tokio::time::sleep(delay) => Ok(()),
        }
    }

    /// Writes the dead letters of `pending` (awaited), leaving the live items in it in their
    /// order. A dead letter that could not be written stays, with every one after it, and the
    /// lane stops: its offset must not be committed.
    async fn dead_letters(
        &self,
        pending: &mut Vec<Item>,
        shutdown: &CancellationToken,
    ) -> Result<(), Stalled> {
        let (dead, live): (Vec<Item>, Vec<Item>) = std::mem::take(pending)
            .into_iter()
            .partition(|i| i.work.is_dead_letter());
        *pending = live;
        let mut dead = dead.into_iter();
        while let Some(item) = dead.next() {
            if let Err(e) = self.dead_letter(&item, shutdown).await {
                tracing::warn!(error = %e, "stopping with a dead letter unwritten; its offset stays uncommitted");
                pending.push(item);
                pending.extend(dead);
                return Err(Stalled);
            }
        }
        Ok(())
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
            source_topic: self.topic.clone(),
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
            .get_or_create(&ClassLabel {
                class: class.to_string(),
            })
            .inc();
        Ok(())
    }
}

/// The span of one bulk request: a trace of its own (one request serves many), linked to the
/// consume span of every record it carries.
fn bulk_span(items: &[Item]) -> tracing::Span {
    let span = tracing::info_span!(
        parent: None,
        "bulk",
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
        db.operation.name = "bulk",
        bulk.items = items.len(),
        bulk.outcome = tracing::field::Empty,
        bulk.failed_items = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
    );
    for trace in items.iter().filter_map(|i| i.trace.as_deref()) {
        telemetry::add_link(&span, trace);
    }
    span
}

/// The answer to a bulk request, on its span: `done` (every item applied), `items-failed`,
/// `refused` (a non-2xx answer), `timeout` or `transport-error`.
fn record_outcome(span: &tracing::Span, outcome: &RequestOutcome, results: &[ItemResult]) {
    // A version conflict is an older event arriving after a newer one: applied, not failed.
    let failed = results
        .iter()
        .filter(|r| {
            !matches!(
                classify_item(r, 1, u32::MAX),
                ItemDecision::Indexed | ItemDecision::AlreadyNewer
            )
        })
        .count();
    let label = match outcome {
        RequestOutcome::Transport { .. } => "transport-error",
        RequestOutcome::Timeout => "timeout",
        RequestOutcome::Response { status, .. } => {
            span.record("http.response.status_code", *status);
            match (*status, failed) {
                (200..=299, 0) => "done",
                (200..=299, _) => "items-failed",
                _ => "refused",
            }
        }
    };
    span.record("bulk.outcome", label);
    span.record("bulk.failed_items", failed);
    if label != "done" {
        span.record("otel.status_code", "ERROR");
    }
}

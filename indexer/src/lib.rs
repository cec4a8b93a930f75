//! indexer: Kafka to the search engine with retries, a DLQ and a circuit breaker.
//!
//! The decision core is pure and table-tested: how batches are bounded and encoded, what a bulk
//! response means for each record, how long to back off, when the breaker opens, and which
//! offsets may be committed while requests finish out of order. The I/O parts sit around it: the
//! consume loop (`pipeline`), the search engine (`sink`), the DLQ producer (`dlq`) and its
//! `dlq inspect|replay` tools (`dlq_tools`), metrics, the health server and the worker Lease.

/// The drift audit's decision: which class (missing, stale, resurrected, orphan) a document of
/// MongoDB and the index walked in id order is in.
pub mod audit;
/// `indexer audit [--repair]`: the walk of both sides, the re-check after the lag, the repairs.
pub mod audit_tool;
/// The batch accumulator (count, bytes, linger) and the halving of a batch refused with 413.
pub mod batch;
/// The circuit breaker's state machine: closed, open, half-open, with the reason of every transition.
pub mod breaker;
/// The NDJSON body of a `_bulk` request: external-version `index` actions with whole documents.
pub mod bulk;
/// What a bulk response means: per request (items, split, breaker) and per item (done, retry, DLQ).
pub mod classify;
/// Which offsets may be committed while bulk requests finish in any order: durable prefixes only.
pub mod commit;
/// Flags and env vars of the binary.
pub mod config;
/// The Kafka consumer and its librdkafka context: rebalance notices, commits on revoke, lag.
pub mod consumer;
/// Makes one lane durable: bulk requests, dead letters, backoffs, the verdict of each answer.
mod deliver;
/// Writes dead letters (original record + DLQ headers), awaited, retried until acknowledged.
pub mod dlq;
/// `indexer dlq inspect|replay`: reads the DLQ to its end, summarizes it, re-drives selected records.
pub mod dlq_tools;
/// The breaker shared by the loop, its lanes and the Lease: checks, steps, transitions logged.
pub mod gate;
/// The index as the audit reads and repairs it: pages in id order, lookups, repairs.
pub mod indexed;
/// Waits out the pipeline's lag: the relay's watermark, then the indexer group's commits.
pub mod lag;
/// A lane of consecutive records, the buffer that becomes the next one, and their bookkeeping.
mod lane;
/// The worker Lease: readiness and breaker state for the operator.
pub mod lease;
/// Prometheus metrics and the readiness flags.
pub mod metrics;
/// The consume loop: concurrent bulk requests fed continuously, commits of durable prefixes,
/// pauses while the breaker is open.
pub mod pipeline;
/// Deletes tombstones older than the horizon, periodically.
pub mod purge;
/// `indexer rebuild`: the next generation from MongoDB and the topic, then the alias swap.
pub mod rebuild;
/// A consumed Kafka record, owned.
pub mod record;
/// Exponential backoff with full jitter, the random draw injected (the contract's, shared with the
/// operator).
pub use pipeline_contract::retry;
/// Builds the clients from the configuration and runs the loop beside the health server.
pub mod run;
/// `/live`, `/ready`, `/metrics`.
pub mod server;
/// Sends one `_bulk` body and reports its outcome as plain data; checks the alias at start.
pub mod sink;
/// MongoDB as the audit reads it: messages in id order, whole documents, the relay's watermark.
pub mod stored;
/// What one bulk answer means for a lane: items moved, the breaker told, the backoff.
pub mod verdict;

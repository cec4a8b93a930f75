//! `pipeline-contract`: everything two components of message-pipeline must agree on.
//!
//! The api-server produces what the indexer consumes, the operator configures both, and the tests
//! check all three; each agreement lives here exactly once so none of them can drift apart. The
//! crate holds types, names and pure functions, plus (feature `installer`) the one function that
//! installs the search index layout, (feature `lease`) the worker Lease holder, and (feature
//! `kafka-client`) how the workers' Kafka clients connect and produce, (feature `search-client`)
//! how they reach the search engine, (feature `document`) the message document in MongoDB and
//! (feature `mongodb-client`) how to reach it, and (feature `process`) how each binary logs and
//! stops. Without features it links no Kafka, MongoDB or Kubernetes client.

/// Why a service refused a client (credentials, CA, permissions), as reasons and log lines.
pub mod access;
/// DLQ record headers and the error classes that explain why a record was dead-lettered.
pub mod dlq;
/// The message document in MongoDB: shape, event and timestamps (feature `document`).
#[cfg(feature = "document")]
pub mod document;
/// The change events on the topic: envelope, payloads, decoding with typed errors.
pub mod event;
/// Installs the index template, first index and write alias idempotently (feature `installer`).
#[cfg(feature = "installer")]
pub mod install;
/// Kafka names: default topic and group, record key, headers and the `message-id` rule.
pub mod kafka;
/// The workers' Kafka clients: connection flags, idempotent producers, records (feature
/// `kafka-client`).
#[cfg(feature = "kafka-client")]
pub mod kafka_client;
/// The Lease a worker holds (feature `lease`).
#[cfg(feature = "lease")]
pub mod lease;
/// How the workers reach MongoDB: connection flags, TLS, refusals (feature `mongodb-client`).
#[cfg(feature = "mongodb-client")]
pub mod mongodb_client;
/// Logging and the shutdown signal, the same in every binary (feature `process`).
#[cfg(feature = "process")]
pub mod process;
/// Exponential backoff with full jitter, the random draw injected: the indexer's retries and DLQ
/// writes, the operator's reconcile retries.
pub mod retry;
/// The search document, the index layout (template, first index, alias) and its template body.
pub mod search;
/// The workers' search client: credential and CA flags, the HTTP client (feature
/// `search-client`).
#[cfg(feature = "search-client")]
pub mod search_client;
#[cfg(feature = "process")]
pub mod telemetry;
/// Timestamps as the contract writes them: RFC 3339, UTC, millisecond precision, `Z`.
pub mod time;
/// Environment variable names and Lease labels/annotations shared by workers and the operator.
pub mod worker;

pub use event::{DecodeError, DeletedPayload, EventType, MessageEvent, MessagePayload};
pub use time::Timestamp;

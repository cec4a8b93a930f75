//! api-server: messages on MongoDB per tenant, the relay to Kafka, and search.
//!
//! Layers, from the edge inwards: `routes` (axum handlers, request plumbing) parse with the pure
//! modules (`validate`, `etag`, `idempotency`, `cursor`, `search`'s query builder) and call
//! `service`, which applies the rules of a change on the `store` (MongoDB; creates through
//! `group_commit`) and books every write
//! in the `outbox`; the `relay` task publishes what the outbox holds to Kafka, persists this
//! process's registration, and adopts dead peers' changes as `replicas` decides. `app` wires it all from `config`; `main` only parses, sets up logs and waits for
//! a signal.

/// Wiring: configuration to a running server, relay and purge.
pub mod app;
/// API keys: the keys file, `Authorization: Bearer`, constant-time lookup of key to tenant.
pub mod auth;
/// Command line and environment.
pub mod config;
/// Opaque pagination cursors.
pub mod cursor;
/// `ETag` of a message (its quoted version) and `If-Match` parsing with strong comparison.
pub mod etag;
/// Per-tenant request rate and concurrency limits (429 with `Retry-After`).
pub mod fairness;
/// Group commit: concurrent creates written by one `insert_many`, each outcome to its request.
pub mod group_commit;
/// Whether MongoDB answers, one probe a second for `/ready` and the Lease.
pub mod health;
/// `Idempotency-Key`: validation, the UUIDv5 message id per tenant, request fingerprints.
pub mod idempotency;
/// Prometheus metrics.
pub mod metrics;
/// The OpenAPI document: the handlers' annotations plus the rules utoipa cannot express.
pub mod openapi;
/// What the relay owes Kafka, and the watermark.
pub mod outbox;
/// RFC 9457 problem+json errors: one constructor per status the API answers with.
pub mod problem;
/// The relay task: outbox and MongoDB scans to Kafka.
pub mod relay;
/// Replicas: which dead peers' registrations (watermark, heartbeat) this process adopts.
pub mod replicas;
/// HTTP routes and request plumbing.
pub mod routes;
/// Search: query parameters, the engine request, hits.
pub mod search;
/// The rules of create, read, update, delete and list.
pub mod service;
/// The MongoDB repository.
pub mod store;
/// Create and patch bodies: parsing (400) apart from validation (422, every violation listed).
pub mod validate;

pub use auth::{KeyStore, Principal};
pub use problem::{FieldError, Problem};

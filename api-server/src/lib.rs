//! api-server: messages on MongoDB per tenant, the relay to Kafka, and search.
//!
//! What exists so far is the pure core every handler will stand on, each part table-tested: the
//! error bodies (RFC 9457), API-key authentication, request body parsing and validation, entity
//! tags and `If-Match`, and the idempotency rules. None of it does I/O beyond reading the keys
//! file.
//!
//! Not built yet: configuration and `main`, the HTTP routes and server, the MongoDB repository,
//! the relay to Kafka, search, metrics and health. Until they exist this crate serves nothing.

/// API keys: the keys file, `Authorization: Bearer`, constant-time lookup of key to tenant.
pub mod auth;
/// `ETag` of a message (its quoted version) and `If-Match` parsing with strong comparison.
pub mod etag;
/// `Idempotency-Key`: validation, the UUIDv5 message id per tenant, request fingerprints.
pub mod idempotency;
/// RFC 9457 problem+json errors: one constructor per status the API answers with.
pub mod problem;
/// Create and patch bodies: parsing (400) apart from validation (422, every violation listed).
pub mod validate;

pub use auth::{KeyStore, Principal};
pub use problem::{FieldError, Problem};

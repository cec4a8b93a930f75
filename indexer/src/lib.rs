//! indexer: Kafka to the search engine with retries, a DLQ and a circuit breaker.
//!
//! Not built yet: issue #5 fills this crate. It has no code so that nothing pretends to work.

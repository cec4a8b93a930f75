//! api-server: messages on MongoDB per tenant, the relay to Kafka, and search.
//!
//! Not built yet: issue #4 fills this crate. It has no code so that nothing pretends to work.

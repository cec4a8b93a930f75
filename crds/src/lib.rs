//! The MessagePipeline custom resource: spec, status, conditions, and the crdgen binary.
//!
//! Not built yet: issue #6 fills this crate. It has no code so that nothing pretends to work.

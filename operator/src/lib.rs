//! operator: reconciles a MessagePipeline into a running pipeline and reports its status.
//!
//! Not built yet: issue #6 fills this crate. It has no code so that nothing pretends to work.

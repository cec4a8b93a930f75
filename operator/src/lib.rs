//! operator: reconciles a MessagePipeline into a running pipeline and reports its status.
//!
//! `validate` (pure: spec rules and claims) → `build` (pure: every child) → `controller` (`apply`
//! with server-side apply, external state through `kafka` and `contract`'s index installer, then
//! `status`, pure). `leader` keeps one active replica; `server` serves `/live`, `/ready` and
//! `/metrics`. The operator never links axum, MongoDB or a Kafka consumer group member: it reads
//! lag with an OffsetFetch request.

/// The children server-side applied, the worker Deployments once what they need exists.
pub mod apply;
/// `spec.audit`: the last audit into the status, `IndexInSync` decided purely.
pub mod audit;
/// Every child of a MessagePipeline, built as pure functions.
pub mod build;
/// The finalizer's work: what this pipeline made outside Kubernetes, and no other claims.
pub mod cleanup;
/// The reconcile pipeline, the finalizer, Events and watches.
pub mod controller;
/// What a pipeline has outside Kubernetes: clusters by identity, topics made, topics lost.
pub mod external;
/// Topics, lag and DLQ depth through the Kafka admin API.
pub mod kafka;
/// Leader election on a Lease.
pub mod leader;
/// Prometheus metrics.
pub mod metrics;
pub mod rebuild;
/// `/live`, `/ready`, `/metrics`.
pub mod server;
/// Conditions and worker summaries, computed purely.
pub mod status;
/// Spec rules and claims.
pub mod validate;

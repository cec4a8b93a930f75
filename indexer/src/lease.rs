//! The indexer's worker Lease: readiness and breaker state for the operator's status
//! (ARCHITECTURE.md, Workers and the operator), through `pipeline_contract::lease::maintain`.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use pipeline_contract::lease::{WorkerState, maintain};
use pipeline_contract::worker::Role;
use tokio_util::sync::CancellationToken;

use crate::gate::Gate;
use crate::metrics::Metrics;

/// Holds the Lease until `shutdown` (returns at once when there is no pipeline identity); its
/// breaker state is the consume loop's breaker, read where it lives, once the loop has one (a
/// start refused by the search engine holds the Lease before it does).
pub async fn run(
    gate: Arc<OnceLock<Arc<Gate>>>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    // Breaker transitions reach the Lease within a second.
    maintain(
        Role::Indexer,
        Duration::from_secs(1),
        move || {
            let state = WorkerState {
                ready: metrics.ready(),
                breaker: gate.get().map(|g| g.state()),
                relay_backlog: None,
                refused: metrics.refusals.current(),
                rebuild: None,
            };
            async move { state }
        },
        shutdown,
    )
    .await;
}

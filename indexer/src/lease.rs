//! The indexer's worker Lease: readiness and breaker state for the operator's status
//! (ARCHITECTURE.md, Workers and the operator), through `pipeline_contract::lease::maintain`.

use std::sync::Arc;
use std::time::Duration;

use pipeline_contract::lease::{WorkerState, maintain};
use pipeline_contract::worker::Role;
use tokio_util::sync::CancellationToken;

use crate::breaker::Phase;
use crate::metrics::Metrics;

fn state(metrics: &Metrics) -> WorkerState {
    let breaker = Phase::ALL
        .into_iter()
        .find(|p| metrics.breaker_is(*p))
        .unwrap_or(Phase::Closed);
    WorkerState {
        ready: metrics.ready(),
        breaker: Some(breaker.as_str()),
        relay_backlog: None,
    }
}

/// Holds the Lease until `shutdown` (returns at once when there is no pipeline identity).
pub async fn run(metrics: Arc<Metrics>, shutdown: CancellationToken) {
    // Breaker transitions reach the Lease within a second.
    maintain(
        Role::Indexer,
        Duration::from_secs(1),
        move || {
            let metrics = metrics.clone();
            async move { state(&metrics) }
        },
        shutdown,
    )
    .await;
}

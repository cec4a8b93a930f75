//! Whether MongoDB answers, as one probe a second finds. `/ready` and the worker Lease read the
//! last answer instead of asking MongoDB themselves, so that any number of `/ready` calls (they
//! are unauthenticated, on the API's port) costs MongoDB one ping a second, and no tenant's
//! requests wait behind them for a connection.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::store::Store;

/// Between two pings.
const EVERY: Duration = Duration::from_secs(1);
/// Longest a ping may take before it counts as no answer.
const TIMEOUT: Duration = Duration::from_secs(2);
/// An answer older than this says nothing any more (the probe itself is stuck).
const STALE: Duration = Duration::from_secs(5);

/// The probe's last answer.
#[derive(Debug, Default)]
pub struct Health {
    /// When MongoDB last answered.
    answered: Mutex<Option<Instant>>,
}

impl Health {
    /// Whether MongoDB answered within the last few seconds.
    pub fn mongodb_answers(&self) -> bool {
        self.answered
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|at| at.elapsed() < STALE)
    }

    /// Pings MongoDB now, records the answer; returns whether it answered.
    pub async fn probe(&self, store: &Store, metrics: &Metrics) -> bool {
        metrics.mongodb_pings.inc();
        let answered = match tokio::time::timeout(TIMEOUT, store.ping()).await {
            Ok(Ok(())) => true,
            Ok(Err(error)) => {
                tracing::warn!(%error, "MongoDB does not answer");
                false
            }
            Err(_) => {
                tracing::warn!(timeout = ?TIMEOUT, "MongoDB does not answer in time");
                false
            }
        };
        let mut last = self.answered.lock().unwrap_or_else(|e| e.into_inner());
        if answered {
            *last = Some(Instant::now());
        } else {
            *last = None;
        }
        answered
    }

    /// Probes every second until `shutdown`.
    pub async fn run(&self, store: Store, metrics: &Metrics, shutdown: CancellationToken) {
        loop {
            self.probe(&store, metrics).await;
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(EVERY) => {}
            }
        }
    }
}

//! Leader election on a coordination Lease, through `kube-lease-manager`: one replica
//! reconciles, the others wait.
//!
//! The Lease's rules are the crate's: the holder renews [`GRACE_SECONDS`] before its
//! [`DURATION_SECONDS`] run out (so every `DURATION - GRACE` seconds), a Lease not renewed in time
//! may be taken over, and a replica that shuts down releases its Lease so that a waiting one takes
//! over at once instead of after the duration. What this module adds is the rule for a leader
//! whose renewal fails: it steps down at once. A renewal fails with `GRACE_SECONDS` left on the
//! Lease, which is the time the controller has to stop its reconciles before another replica may
//! start its own; waiting for the API to come back would spend that margin. The caller stops
//! reconciling and exits, and the Deployment restarts it as a candidate (a restarted container
//! keeps its pod's name, so it takes its own Lease back without waiting when nobody else did).

use std::time::Duration;

use kube::Client;
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder, LeaseManagerError};
use tokio_util::sync::CancellationToken;

/// The Lease's `leaseDurationSeconds`: a leader not heard from for this long may be replaced.
pub const DURATION_SECONDS: u64 = 15;
/// How long before its Lease runs out the leader renews it (and how long a leader whose renewal
/// failed has to stop).
pub const GRACE_SECONDS: u64 = 10;
/// Pause between candidate rounds that failed against the API.
const RETRY: Duration = Duration::from_secs(2);

/// Where the Lease is and who this replica is.
#[derive(Debug, Clone)]
pub struct Election {
    pub namespace: String,
    pub name: String,
    pub identity: String,
}

/// Why a leader stopped leading while it still wanted to.
#[derive(Debug)]
pub enum Lost {
    /// Another replica holds the Lease now.
    TakenOver,
    /// A renewal failed; the Lease runs out within [`GRACE_SECONDS`].
    RenewalFailed(LeaseManagerError),
}

impl std::fmt::Display for Lost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::TakenOver => f.write_str("another replica took the leader Lease"),
            Self::RenewalFailed(e) => write!(f, "renewing the leader Lease failed: {e}"),
        }
    }
}

impl Election {
    /// This replica as a candidate; creates the Lease when there is none.
    pub async fn candidate(&self, client: Client) -> Result<Candidate, LeaseManagerError> {
        let manager = LeaseManagerBuilder::new(client, &self.name)
            .with_namespace(&self.namespace)
            .with_identity(&self.identity)
            .with_duration(DURATION_SECONDS)
            .with_grace(GRACE_SECONDS)
            .build()
            .await?;
        Ok(Candidate { manager })
    }
}

/// A replica taking part in the election.
#[derive(Debug)]
pub struct Candidate {
    manager: LeaseManager,
}

impl Candidate {
    /// Waits until this replica leads (`true`), or until `shutdown` (`false`). Failed rounds are
    /// logged and retried: a candidate holds nothing, so an unreachable API only delays it.
    pub async fn acquire(&self, shutdown: &CancellationToken) -> bool {
        loop {
            let round = tokio::select! {
                () = shutdown.cancelled() => return false,
                round = self.manager.changed() => round,
            };
            match round {
                Ok(true) => return true,
                Ok(false) => {}
                Err(error) => {
                    tracing::warn!(%error, "leader election round failed");
                    tokio::select! {
                        () = shutdown.cancelled() => return false,
                        () = tokio::time::sleep(RETRY) => {}
                    }
                }
            }
        }
    }

    /// Leads while `work` runs, renewing the Lease, until `shutdown`, until leadership is lost or
    /// until `work` ends by itself. Either way `stop` is cancelled (which should end `work`), the
    /// Lease is renewed until `work` has ended and released after that, unless it was lost: then
    /// the reason is returned.
    pub async fn lead(
        &self,
        work: impl Future<Output = ()>,
        stop: &CancellationToken,
        shutdown: &CancellationToken,
    ) -> Option<Lost> {
        let ended = CancellationToken::new();
        let work = async {
            work.await;
            ended.cancel();
        };
        let stop_on_shutdown = async {
            tokio::select! {
                () = shutdown.cancelled() => stop.cancel(),
                () = ended.cancelled() => {}
            }
        };
        let held = async {
            let held = self.hold(&ended).await;
            stop.cancel();
            held
        };
        let ((), (), held) = tokio::join!(work, stop_on_shutdown, held);
        held.err()
    }

    /// Renews the Lease until `done` (then releases it, `Ok`), or until leadership is lost.
    async fn hold(&self, done: &CancellationToken) -> Result<(), Lost> {
        let renewed = tokio::select! {
            () = done.cancelled() => {
                if let Err(error) = self.manager.release().await {
                    tracing::warn!(%error, "releasing the leader Lease failed; it expires instead");
                }
                return Ok(());
            }
            renewed = self.manager.changed() => renewed,
        };
        Err(match renewed {
            // `changed` returns only when the holder changes; a leader can only lose.
            Ok(_) => Lost::TakenOver,
            Err(error) => Lost::RenewalFailed(error),
        })
    }
}

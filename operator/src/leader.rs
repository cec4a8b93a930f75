//! Leader election on a coordination Lease: one replica reconciles, the others wait.
//!
//! The holder renews every `renew`; a Lease not renewed for `duration` may be taken over. Writes
//! carry the Lease's resourceVersion, so two candidates can never both win a round. A leader that
//! cannot renew before its Lease would expire steps down (the caller stops reconciling and exits,
//! and the Deployment restarts it as a candidate).

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, PostParams};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone)]
pub struct Election {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    pub duration: Duration,
    pub renew: Duration,
}

/// Whether `lease` can be taken by `identity` at `now`.
pub fn takeable(lease: &Lease, identity: &str, now: Timestamp) -> bool {
    let Some(spec) = &lease.spec else { return true };
    if spec
        .holder_identity
        .as_deref()
        .is_none_or(|h| h == identity || h.is_empty())
    {
        return true;
    }
    let duration = i64::from(spec.lease_duration_seconds.unwrap_or(15));
    spec.renew_time
        .as_ref()
        .is_none_or(|t| t.0.as_second() + duration < now.as_second())
}

impl Election {
    /// One round: `Ok(true)` when this candidate holds the Lease afterwards.
    pub async fn try_acquire(&self, client: &Client) -> Result<bool, kube::Error> {
        let api: Api<Lease> = Api::namespaced(client.clone(), &self.namespace);
        let now = Timestamp::now();
        let duration = i32::try_from(self.duration.as_secs()).unwrap_or(15);
        let Some(mut lease) = api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    namespace: Some(self.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(duration),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        if !takeable(&lease, &self.identity, now) {
            return Ok(false);
        }
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            spec.holder_identity = Some(self.identity.clone());
            spec.acquire_time = Some(MicroTime(now));
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.renew_time = Some(MicroTime(now));
        spec.lease_duration_seconds = Some(duration);
        match api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Waits until this candidate leads (or `shutdown`); `false` on shutdown.
    pub async fn acquire(&self, client: &Client, shutdown: &CancellationToken) -> bool {
        loop {
            match self.try_acquire(client).await {
                Ok(true) => return true,
                Ok(false) => {}
                Err(error) => tracing::warn!(%error, "leader election round failed"),
            }
            tokio::select! {
                () = shutdown.cancelled() => return false,
                () = tokio::time::sleep(self.renew) => {}
            }
        }
    }

    /// Renews until `shutdown`, or until leadership is lost; fires `lost` in the second case.
    pub async fn hold(
        &self,
        client: &Client,
        shutdown: &CancellationToken,
        lost: &CancellationToken,
    ) {
        let mut last_renewal = tokio::time::Instant::now();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(self.renew) => {}
            }
            match self.try_acquire(client).await {
                Ok(true) => last_renewal = tokio::time::Instant::now(),
                Ok(false) => {
                    tracing::error!("another replica took the leader Lease; stepping down");
                    lost.cancel();
                    return;
                }
                Err(error) => {
                    tracing::warn!(%error, "renewing the leader Lease failed");
                    if last_renewal.elapsed() >= self.duration {
                        tracing::error!("could not renew the leader Lease in time; stepping down");
                        lost.cancel();
                        return;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_is_takeable_when_free_mine_or_expired() {
        let now = Timestamp::from_second(100).unwrap();
        let lease = |holder: Option<&str>, renewed: i64| Lease {
            spec: Some(LeaseSpec {
                holder_identity: holder.map(str::to_owned),
                lease_duration_seconds: Some(15),
                renew_time: Some(MicroTime(Timestamp::from_second(renewed).unwrap())),
                ..LeaseSpec::default()
            }),
            ..Lease::default()
        };
        assert!(takeable(&lease(None, 99), "me", now));
        assert!(takeable(&lease(Some("me"), 99), "me", now));
        assert!(!takeable(&lease(Some("other"), 90), "me", now));
        assert!(takeable(&lease(Some("other"), 84), "me", now));
    }
}

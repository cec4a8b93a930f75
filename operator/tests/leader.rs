//! Leader election against the rig's real API server: one candidate leads while the other
//! waits and takes over only after the leader stopped; a leader whose renewal fails stops its
//! work before its Lease runs out; a leader whose Lease another replica took steps down.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use e2e::proxy::TcpProxy;
use e2e::{rig::rig, unique, wait};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use operator::leader::{Candidate, DURATION_SECONDS, Election, GRACE_SECONDS, Lost};
use serde_json::json;
use tokio_util::sync::CancellationToken;

const NAMESPACE: &str = "default";
/// Long enough for a few renewals and one expiry.
const DEADLINE: Duration = Duration::from_secs(3 * DURATION_SECONDS);

async fn candidate(client: Client, lease: &str, identity: &str) -> Candidate {
    Election {
        namespace: NAMESPACE.into(),
        name: lease.into(),
        identity: identity.into(),
    }
    .candidate(client)
    .await
    .expect("a candidate")
}

/// (holder, renewTime, leaseDurationSeconds) of the Lease now.
async fn read(leases: &Api<Lease>, name: &str) -> (Option<String>, Option<Timestamp>, i64) {
    let spec = leases.get(name).await.unwrap().spec.unwrap_or_default();
    (
        spec.holder_identity,
        spec.renew_time.map(|t| t.0),
        spec.lease_duration_seconds.map_or(0, i64::from),
    )
}

/// Waits until `identity` has renewed the Lease after `since`; returns the renewal's time.
async fn renewed_after(
    leases: &Api<Lease>,
    name: &str,
    identity: &str,
    since: Timestamp,
) -> Timestamp {
    wait::until(&format!("{identity} renewing {name}"), DEADLINE, || async {
        let (holder, renewed, _) = read(leases, name).await;
        renewed.filter(|t| holder.as_deref() == Some(identity) && *t > since)
    })
    .await
}

/// Leads with a piece of work that runs until told to stop and records when it ended.
fn lead(
    leader: Candidate,
    shutdown: CancellationToken,
) -> (
    tokio::task::JoinHandle<Option<Lost>>,
    Arc<Mutex<Option<Timestamp>>>,
) {
    let ended = Arc::new(Mutex::new(None));
    let task = tokio::spawn({
        let ended = ended.clone();
        async move {
            let stop = CancellationToken::new();
            let work = async {
                stop.cancelled().await;
                *ended.lock().unwrap() = Some(Timestamp::now());
            };
            leader.lead(work, &stop, &shutdown).await
        }
    });
    (task, ended)
}

#[tokio::test]
async fn one_candidate_leads_and_the_other_takes_over_only_after_it_stopped() {
    let client = rig().kube_client().await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), NAMESPACE);
    let name = unique("leader");
    let a = candidate(client.clone(), &name, "a").await;
    let b = candidate(client.clone(), &name, "b").await;
    let shutdown = CancellationToken::new();
    assert!(a.acquire(&shutdown).await, "the first candidate leads");
    let (a_leads, a_ended) = lead(a, shutdown.clone());
    let b_waits = tokio::spawn(async move {
        let never = CancellationToken::new();
        let led = b.acquire(&never).await;
        (led, Timestamp::now())
    });

    // Two renewals by the leader: the other candidate had time to take over, and did not.
    let first = renewed_after(&leases, &name, "a", Timestamp::UNIX_EPOCH).await;
    renewed_after(&leases, &name, "a", first).await;
    assert!(!b_waits.is_finished(), "the second candidate leads too");

    shutdown.cancel();
    assert!(a_leads.await.unwrap().is_none(), "a shutdown is no loss");
    let a_ended = a_ended.lock().unwrap().expect("the leader's work stopped");
    let (led, b_leads_at) = tokio::time::timeout(DEADLINE, b_waits)
        .await
        .expect("the second candidate leads once the first stopped")
        .unwrap();
    assert!(led);
    assert!(
        b_leads_at >= a_ended,
        "the second candidate led at {b_leads_at}, before the first stopped at {a_ended}"
    );
    assert_eq!(read(&leases, &name).await.0.as_deref(), Some("b"));
    leases
        .delete(&name, &DeleteParams::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn a_leader_whose_renewal_fails_stops_before_its_lease_runs_out() {
    let client = rig().kube_client().await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), NAMESPACE);
    let name = unique("leader");
    // The leader reaches the API server through a proxy the test cuts.
    let mut config = rig().kube_config().await;
    let upstream = config.cluster_url.authority().unwrap().to_string();
    let proxy = TcpProxy::start(&upstream).await;
    config.cluster_url = format!("https://{}", proxy.addr()).parse().unwrap();
    let cut_off = Client::try_from(config).unwrap();
    let a = candidate(cut_off, &name, "a").await;
    let shutdown = CancellationToken::new();
    assert!(a.acquire(&shutdown).await);
    let (a_leads, a_ended) = lead(a, shutdown.clone());
    renewed_after(&leases, &name, "a", Timestamp::UNIX_EPOCH).await;

    proxy.cut();
    let lost = tokio::time::timeout(DEADLINE, a_leads)
        .await
        .expect("the leader steps down")
        .unwrap();
    assert!(
        matches!(lost, Some(Lost::RenewalFailed(_))),
        "stepped down for the failed renewal, not {lost:?}"
    );
    let a_ended = a_ended.lock().unwrap().expect("the leader's work stopped");
    let (holder, renewed, duration) = read(&leases, &name).await;
    assert_eq!(holder.as_deref(), Some("a"), "nobody else wrote the Lease");
    let expires = renewed.unwrap() + SignedDuration::from_secs(duration);
    assert!(
        a_ended < expires,
        "the leader's work ended at {a_ended}, after its Lease ran out at {expires}"
    );

    // Another replica takes over, and not before the Lease ran out.
    let b = candidate(client, &name, "b").await;
    let led = tokio::time::timeout(DEADLINE, b.acquire(&CancellationToken::new()))
        .await
        .expect("another candidate takes over the expired Lease");
    assert!(led);
    let b_leads_at = Timestamp::now();
    assert!(
        b_leads_at >= expires,
        "taken over at {b_leads_at}, before the Lease ran out at {expires}"
    );
    assert!(
        expires.duration_since(a_ended)
            >= SignedDuration::from_secs(GRACE_SECONDS.cast_signed()) / 2,
        "less than half the grace ({GRACE_SECONDS} s) left when the leader stopped: {a_ended} vs {expires}"
    );
    leases
        .delete(&name, &DeleteParams::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn a_leader_whose_lease_was_taken_steps_down() {
    let client = rig().kube_client().await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), NAMESPACE);
    let name = unique("leader");
    let a = candidate(client.clone(), &name, "a").await;
    let shutdown = CancellationToken::new();
    assert!(a.acquire(&shutdown).await);
    let (a_leads, a_ended) = lead(a, shutdown.clone());
    renewed_after(&leases, &name, "a", Timestamp::UNIX_EPOCH).await;

    // Another replica's write, as after a partition the leader did not notice.
    let taken = json!({"spec": {
        "holderIdentity": "intruder",
        "renewTime": MicroTime(Timestamp::now()),
        "acquireTime": MicroTime(Timestamp::now()),
    }});
    leases
        .patch(&name, &PatchParams::default(), &Patch::Merge(&taken))
        .await
        .unwrap();
    let lost = tokio::time::timeout(DEADLINE, a_leads)
        .await
        .expect("the leader steps down")
        .unwrap();
    assert!(
        matches!(lost, Some(Lost::TakenOver)),
        "stepped down because the Lease was taken, not {lost:?}"
    );
    assert!(
        a_ended.lock().unwrap().is_some(),
        "the leader's work stopped"
    );
    assert_eq!(read(&leases, &name).await.0.as_deref(), Some("intruder"));
    leases
        .delete(&name, &DeleteParams::default())
        .await
        .unwrap();
}

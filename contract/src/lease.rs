//! The Lease a worker holds (feature `lease`): `<pipeline>-<role>-<pod>` in the pipeline's
//! namespace, labelled with pipeline and role, renewed every [`lease::RENEW_SECONDS`], its
//! annotations carrying readiness and breaker state.
//!
//! Renewals change only `spec.renewTime`; the annotations change only when the worker's state
//! does, which is what the operator reacts to. On a clean stop the Lease is deleted, so the
//! worker leaves the pipeline's status at once; after a crash it expires and the operator
//! deletes it.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::access::Refused;
use crate::worker::lease::RelayBacklog;
use crate::worker::{BreakerState, Role, env, lease, lease_name};

/// The field manager of worker Leases.
pub const FIELD_MANAGER: &str = "message-pipeline-worker";

/// What the Lease says about the worker.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WorkerState {
    pub ready: bool,
    /// The indexer's circuit breaker; `None` for the api-server.
    pub breaker: Option<BreakerState>,
    /// The api-server's relay backlog; `None` for indexers.
    pub relay_backlog: Option<RelayBacklog>,
    /// A refusal the worker's clients met recently (a credential, a CA, a permission).
    pub refused: Option<Refused>,
    /// The rebuild Job's progress; `None` for the workers.
    pub rebuild: Option<RebuildProgress>,
}

/// Where a rebuild Job is, as its Lease says.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RebuildProgress {
    pub generation: u32,
    /// `Scanning`, `CatchingUp`, `AwaitingSwap`, `Swapped` or `Done`.
    pub phase: String,
    pub done: u64,
    pub total: u64,
}

impl RebuildProgress {
    /// The progress a Lease's annotations carry; `None` when they carry none.
    pub fn from_annotations(a: &BTreeMap<String, String>) -> Option<Self> {
        let number = |key: &str| a.get(key).and_then(|v| v.parse::<u64>().ok());
        Some(Self {
            generation: u32::try_from(number(lease::ANNOTATION_REBUILD_GENERATION)?).ok()?,
            phase: a.get(lease::ANNOTATION_REBUILD_PHASE)?.clone(),
            done: number(lease::ANNOTATION_REBUILD_DONE).unwrap_or(0),
            total: number(lease::ANNOTATION_REBUILD_TOTAL).unwrap_or(0),
        })
    }
}

/// How an audit ended, as its summary says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum AuditOutcome {
    /// No divergent document.
    InSync,
    /// Divergent documents found, and every one repaired.
    Repaired,
    /// Divergent documents remain (found without `--repair`, or a repair refused).
    Diverged,
    /// Nothing remains divergent, but some re-check ran before the pipeline had caught up.
    Unsettled,
    /// The audit could not finish (`message` says why).
    Failed,
}

/// Documents per class of divergence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DriftCounts {
    pub missing: u64,
    pub stale: u64,
    pub resurrected: u64,
    pub orphan: u64,
}

impl DriftCounts {
    pub fn total(&self) -> u64 {
        self.missing + self.stale + self.resurrected + self.orphan
    }

    /// Each class's name and count, in the order of the audit's report.
    pub fn classes(&self) -> [(&'static str, u64); 4] {
        [
            ("missing", self.missing),
            ("stale", self.stale),
            ("resurrected", self.resurrected),
            ("orphan", self.orphan),
        ]
    }
}

/// What an audit found and did: the JSON of [`lease::ANNOTATION_AUDIT_SUMMARY`] on the Lease
/// [`audit_lease_name`], written by the audit Job when it ends, read by the operator into the
/// pipeline's status.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditSummary {
    /// RFC 3339.
    pub start_time: String,
    pub completion_time: String,
    pub outcome: AuditOutcome,
    /// Documents read from MongoDB and from the index, tombstones included.
    pub mongodb_documents: u64,
    pub index_documents: u64,
    /// Divergent after the re-check, per class; and of those, repaired.
    pub found: DriftCounts,
    pub repaired: DriftCounts,
    /// Why it failed, or which part of the pipeline had not caught up.
    #[serde(default)]
    pub message: String,
}

/// The Lease that carries the last audit's summary: `<pipeline>-audit`.
pub fn audit_lease_name(pipeline: &str) -> String {
    format!("{pipeline}-{}", Role::Audit.as_str())
}

impl AuditSummary {
    /// The summary a Lease carries; `None` when it carries none (or one this version cannot read).
    pub fn from_lease(l: &Lease) -> Option<Self> {
        let json = l
            .metadata
            .annotations
            .as_ref()?
            .get(lease::ANNOTATION_AUDIT_SUMMARY)?;
        serde_json::from_str(json).ok()
    }

    /// The Lease `<pipeline>-audit` carrying this summary, owned by the pipeline when its uid
    /// is known (so it goes with the pipeline), held by the pod that audited.
    pub fn lease(&self, id: &Identity) -> Lease {
        let json = serde_json::to_string(self).expect("a summary always serializes");
        let mut l = lease_object(id, &WorkerState::default(), Timestamp::now());
        l.metadata.name = Some(audit_lease_name(&id.pipeline));
        l.metadata.annotations = Some(BTreeMap::from([(
            lease::ANNOTATION_AUDIT_SUMMARY.to_owned(),
            json,
        )]));
        l.metadata.owner_references = id.pipeline_uid.as_ref().map(|uid| {
            vec![OwnerReference {
                api_version: "messagepipeline.io/v1alpha1".into(),
                kind: "MessagePipeline".into(),
                name: id.pipeline.clone(),
                uid: uid.clone(),
                ..OwnerReference::default()
            }]
        });
        l
    }

    /// Writes the summary's Lease (from the identity in the environment); `Ok(false)` when there
    /// is none (an audit run by hand).
    pub async fn publish(&self) -> Result<bool, kube::Error> {
        let Some(id) = Identity::from_env(Role::Audit) else {
            return Ok(false);
        };
        let client = kube::Client::try_default().await?;
        let api: Api<Lease> = Api::namespaced(client, &id.namespace);
        let lease = self.lease(&id);
        let params = PatchParams::apply(FIELD_MANAGER).force();
        api.patch(
            &audit_lease_name(&id.pipeline),
            &params,
            &Patch::Apply(&lease),
        )
        .await?;
        Ok(true)
    }
}

/// Which Lease: from `MP_PIPELINE_NAME`, `MP_PIPELINE_NAMESPACE` and `POD_NAME`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub pipeline: String,
    pub namespace: String,
    /// `MP_PIPELINE_UID` (the operator sets it; a worker run by hand may not have it).
    pub pipeline_uid: Option<String>,
    pub pod: String,
    pub role: Role,
}

/// The env vars [`Identity::from_env`] reads (outside the command line).
pub const IDENTITY_ENV: [&str; 4] = [
    env::PIPELINE_NAME,
    env::PIPELINE_NAMESPACE,
    env::PIPELINE_UID,
    env::POD_NAME,
];

impl Identity {
    /// `None` unless all three variables are set (a worker run outside any pipeline).
    pub fn from_env(role: Role) -> Option<Self> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Some(Self {
            pipeline: var(env::PIPELINE_NAME)?,
            namespace: var(env::PIPELINE_NAMESPACE)?,
            pipeline_uid: var(env::PIPELINE_UID),
            pod: var(env::POD_NAME)?,
            role,
        })
    }

    pub fn lease_name(&self) -> String {
        lease_name(&self.pipeline, self.role, &self.pod)
    }
}

/// The Lease object for `state` at `now`.
pub fn lease_object(id: &Identity, state: &WorkerState, now: Timestamp) -> Lease {
    let mut annotations =
        BTreeMap::from([(lease::ANNOTATION_READY.to_owned(), state.ready.to_string())]);
    if let Some(b) = state.breaker {
        annotations.insert(lease::ANNOTATION_BREAKER.to_owned(), b.as_str().to_owned());
    }
    if let Some(b) = state.relay_backlog {
        annotations.insert(
            lease::ANNOTATION_RELAY_BACKLOG.to_owned(),
            b.as_str().to_owned(),
        );
    }
    if let Some(r) = &state.refused {
        annotations.insert(lease::ANNOTATION_REFUSAL.to_owned(), r.refusal.reason());
        let mut message = r.to_string();
        if message.len() > lease::REFUSAL_MESSAGE_MAX {
            let mut end = lease::REFUSAL_MESSAGE_MAX;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
        }
        annotations.insert(lease::ANNOTATION_REFUSAL_MESSAGE.to_owned(), message);
    }
    if let Some(r) = &state.rebuild {
        annotations.extend([
            (
                lease::ANNOTATION_REBUILD_GENERATION.to_owned(),
                r.generation.to_string(),
            ),
            (lease::ANNOTATION_REBUILD_PHASE.to_owned(), r.phase.clone()),
            (
                lease::ANNOTATION_REBUILD_DONE.to_owned(),
                r.done.to_string(),
            ),
            (
                lease::ANNOTATION_REBUILD_TOTAL.to_owned(),
                r.total.to_string(),
            ),
        ]);
    }
    let mut labels = BTreeMap::from([
        (lease::LABEL_PIPELINE.to_owned(), id.pipeline.clone()),
        (lease::LABEL_ROLE.to_owned(), id.role.as_str().to_owned()),
    ]);
    if let Some(uid) = &id.pipeline_uid {
        labels.insert(lease::LABEL_PIPELINE_UID.to_owned(), uid.clone());
    }
    Lease {
        metadata: ObjectMeta {
            name: Some(id.lease_name()),
            namespace: Some(id.namespace.clone()),
            labels: Some(labels),
            annotations: Some(annotations),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(id.pod.clone()),
            lease_duration_seconds: Some(lease::DURATION_SECONDS as i32),
            renew_time: Some(MicroTime(now)),
            ..LeaseSpec::default()
        }),
    }
}

/// Whether a worker's Lease is past its duration at `now`: the one rule by which a worker that
/// stopped renewing leaves the pipeline (a Lease without a duration gets [`lease::DURATION_SECONDS`],
/// one never renewed counts from its acquisition, one with neither is expired).
pub fn expired(l: &Lease, now: Timestamp) -> bool {
    let Some(spec) = &l.spec else { return true };
    let duration = i64::from(
        spec.lease_duration_seconds
            .unwrap_or(lease::DURATION_SECONDS as i32),
    );
    let last = spec
        .renew_time
        .as_ref()
        .or(spec.acquire_time.as_ref())
        .map(|t| t.0);
    match last {
        Some(last) => last.as_second() + duration < now.as_second(),
        None => true,
    }
}

/// Holds the Lease until `shutdown`, then deletes it. Renews every `RENEW_SECONDS` and at once
/// when `state` changes. Failures are reported through `on_error` and retried at the next tick:
/// a worker keeps working without its Lease (the operator then shows it as not live).
pub async fn hold(
    client: kube::Client,
    id: Identity,
    mut state: watch::Receiver<WorkerState>,
    shutdown: CancellationToken,
    on_error: impl Fn(&kube::Error),
) {
    let api: Api<Lease> = Api::namespaced(client, &id.namespace);
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let name = id.lease_name();
    loop {
        let current = state.borrow_and_update().clone();
        let lease = lease_object(&id, &current, Timestamp::now());
        if let Err(error) = api.patch(&name, &params, &Patch::Apply(&lease)).await {
            on_error(&error);
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            changed = state.changed() => if changed.is_err() { break },
            () = tokio::time::sleep(Duration::from_secs(u64::from(lease::RENEW_SECONDS))) => {}
        }
    }
    if let Err(error) = api.delete(&name, &DeleteParams::default()).await {
        on_error(&error);
    }
}

/// Everything a worker does about its Lease: reads its identity from the environment, makes a
/// client (in-cluster or `KUBECONFIG`), asks `probe` for its state every `every` and holds the
/// Lease with it until `shutdown`. Returns at once, logging why, when there is no identity or no
/// client: a worker outside a pipeline works without a Lease.
pub async fn maintain<F, Fut>(role: Role, every: Duration, probe: F, shutdown: CancellationToken)
where
    F: Fn() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = WorkerState> + Send,
{
    let Some(id) = Identity::from_env(role) else {
        tracing::info!("no pipeline identity in the environment: holding no worker Lease");
        return;
    };
    let client = match kube::Client::try_default().await {
        Ok(c) => c,
        Err(error) => {
            tracing::warn!(%error, "no Kubernetes client: holding no worker Lease");
            return;
        }
    };
    tracing::info!(lease = %id.lease_name(), namespace = %id.namespace, "holding the worker Lease");
    let (tx, rx) = watch::channel(probe().await);
    let prober = {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(every) => {}
                }
                let now = probe().await;
                tx.send_if_modified(|s| {
                    let changed = *s != now;
                    *s = now;
                    changed
                });
            }
        })
    };
    hold(client, id, rx, shutdown, |error| {
        tracing::warn!(%error, "worker Lease request failed");
    })
    .await;
    let _ = prober.await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::{Cause, Refusal, Service};

    #[test]
    fn a_lease_expires_after_its_duration_from_the_last_renewal() {
        let at = |s: i64| Some(MicroTime(Timestamp::from_second(s).unwrap()));
        let lease = |duration: Option<i32>, acquired, renewed| Lease {
            spec: Some(LeaseSpec {
                lease_duration_seconds: duration,
                acquire_time: acquired,
                renew_time: renewed,
                ..LeaseSpec::default()
            }),
            ..Lease::default()
        };
        let now = Timestamp::from_second(100).unwrap();
        // (duration, acquired, renewed, expired at 100 s)
        let rows = [
            (Some(10), None, at(90), false),
            (Some(10), None, at(89), true),
            (Some(10), at(95), at(80), true),
            (None, None, at(70), false),
            (None, None, at(69), true),
            (Some(10), at(95), None, false),
            (Some(10), None, None, true),
        ];
        for (duration, acquired, renewed, want) in rows {
            assert_eq!(
                expired(&lease(duration, acquired.clone(), renewed.clone()), now),
                want,
                "duration {duration:?}, acquired {acquired:?}, renewed {renewed:?}"
            );
        }
        assert!(expired(&Lease::default(), now), "no spec");
    }

    #[test]
    fn the_lease_carries_labels_annotations_and_a_renewal() {
        let id = Identity {
            pipeline: "orders".into(),
            namespace: "shop".into(),
            pipeline_uid: Some("3f1c".into()),
            pod: "orders-indexer-7d9f".into(),
            role: Role::Indexer,
        };
        let now = Timestamp::from_second(1_000).unwrap();
        let l = lease_object(
            &id,
            &WorkerState {
                ready: true,
                breaker: Some(BreakerState::Open),
                relay_backlog: None,
                refused: None,
                rebuild: None,
            },
            now,
        );
        assert_eq!(
            l.metadata.name.as_deref(),
            Some("orders-indexer-orders-indexer-7d9f")
        );
        let labels = l.metadata.labels.unwrap();
        assert_eq!(
            (
                labels[lease::LABEL_PIPELINE].as_str(),
                labels[lease::LABEL_PIPELINE_UID].as_str(),
                labels[lease::LABEL_ROLE].as_str()
            ),
            ("orders", "3f1c", "indexer")
        );
        let annotations = l.metadata.annotations.unwrap();
        assert_eq!(annotations[lease::ANNOTATION_READY], "true");
        assert_eq!(annotations[lease::ANNOTATION_BREAKER], "open");
        assert!(!annotations.contains_key(lease::ANNOTATION_RELAY_BACKLOG));
        assert!(!annotations.contains_key(lease::ANNOTATION_REFUSAL));
        let spec = l.spec.unwrap();
        assert_eq!(spec.renew_time, Some(MicroTime(now)));
        assert_eq!(spec.lease_duration_seconds, Some(30));
        let api = lease_object(
            &Identity {
                role: Role::Api,
                ..id
            },
            &WorkerState {
                ready: true,
                breaker: None,
                relay_backlog: Some(RelayBacklog::Over1m),
                refused: Some(Refused {
                    refusal: Refusal::new(Service::Kafka, Cause::AuthenticationFailed),
                    endpoint: "kafka:9093".into(),
                    detail: "é".repeat(lease::REFUSAL_MESSAGE_MAX),
                }),
                rebuild: None,
            },
            now,
        );
        let annotations = api.metadata.annotations.unwrap();
        assert!(!annotations.contains_key(lease::ANNOTATION_BREAKER));
        assert_eq!(annotations[lease::ANNOTATION_RELAY_BACKLOG], "over-1m");
        assert_eq!(
            annotations[lease::ANNOTATION_REFUSAL],
            "KafkaAuthenticationFailed"
        );
        let message = &annotations[lease::ANNOTATION_REFUSAL_MESSAGE];
        assert!(
            message.starts_with("Kafka at kafka:9093 refused") && message.len() <= 1024,
            "{} bytes: {message}",
            message.len()
        );
        assert_eq!(RebuildProgress::from_annotations(&annotations), None);
    }

    #[test]
    fn a_rebuild_lease_carries_its_progress_and_reads_back() {
        let id = Identity {
            pipeline: "orders".into(),
            namespace: "shop".into(),
            pipeline_uid: None,
            pod: "orders-rebuild-2-x".into(),
            role: Role::Rebuild,
        };
        let progress = RebuildProgress {
            generation: 2,
            phase: "Scanning".into(),
            done: 1_000,
            total: 200_000,
        };
        let l = lease_object(
            &id,
            &WorkerState {
                rebuild: Some(progress.clone()),
                ..WorkerState::default()
            },
            Timestamp::from_second(1).unwrap(),
        );
        assert_eq!(l.metadata.labels.unwrap()[lease::LABEL_ROLE], "rebuild");
        let annotations = l.metadata.annotations.unwrap();
        assert_eq!(annotations[lease::ANNOTATION_REBUILD_PHASE], "Scanning");
        assert_eq!(
            RebuildProgress::from_annotations(&annotations),
            Some(progress)
        );
    }

    #[test]
    fn an_audit_summary_lease_is_named_after_the_pipeline_owned_by_it_and_reads_back() {
        let id = Identity {
            pipeline: "orders".into(),
            namespace: "shop".into(),
            pipeline_uid: Some("u-1".into()),
            pod: "orders-audit-29000000-x".into(),
            role: Role::Audit,
        };
        let summary = AuditSummary {
            start_time: "2026-12-03T10:00:00Z".into(),
            completion_time: "2026-12-03T10:00:09Z".into(),
            outcome: AuditOutcome::Diverged,
            mongodb_documents: 10,
            index_documents: 10,
            found: DriftCounts {
                missing: 1,
                orphan: 1,
                ..DriftCounts::default()
            },
            repaired: DriftCounts::default(),
            message: String::new(),
        };
        let l = summary.lease(&id);
        assert_eq!(l.metadata.name.as_deref(), Some("orders-audit"));
        assert_eq!(
            l.metadata.labels.as_ref().unwrap()[lease::LABEL_ROLE],
            "audit"
        );
        let owner = &l.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()),
            ("MessagePipeline", "orders", "u-1")
        );
        assert_eq!(AuditSummary::from_lease(&l), Some(summary.clone()));
        assert_eq!(summary.found.total(), 2);
        assert_eq!(
            AuditSummary::from_lease(&lease_object(
                &id,
                &WorkerState::default(),
                Timestamp::from_second(1).unwrap()
            )),
            None,
            "a worker's Lease carries no summary"
        );
    }
}

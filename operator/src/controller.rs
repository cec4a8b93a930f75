//! The reconcile pipeline: validate → build (pure) → apply (server-side apply, owner references)
//! → external state (topics, index) → status. Plus the finalizer, the paused annotation, Events,
//! and the watches that trigger it.
//!
//! The operator is the only writer of MessagePipeline status; it writes it only when it changed,
//! so a quiet pipeline causes no writes at all.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Secret, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::core::error_boundary::DeserializeGuard;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{WatchStreamExt, predicates, watcher};
use kube::{Client, Resource, ResourceExt};
use messagepipeline_crd::{
    DeletionPolicy, FIELD_MANAGER, FINALIZER, MessagePipeline, MessagePipelineStatus,
    PAUSED_ANNOTATION, condition,
};
use pipeline_contract::install::{SearchEndpoint, install};
use pipeline_contract::search::{IndexLayout, IndexSettings};
use pipeline_contract::worker::lease;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use crate::build::{Children, PerRole, children};
use crate::kafka::{self, Credentials};
use crate::metrics::Metrics;
use crate::status::{self, Observed};
use crate::validate;

/// Reconciles running at once.
pub const CONCURRENCY: u16 = 4;

/// How often a healthy pipeline is looked at again (lag and Leases change without events).
pub const REQUEUE: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("finalizer: {0}")]
    Finalizer(String),
    #[error("Kafka: {0}")]
    Kafka(#[from] kafka::KafkaError),
    #[error("search engine: {0}")]
    Search(String),
    #[error("secret {name}: {problem}")]
    Secret { name: String, problem: String },
}

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub http: reqwest::Client,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").finish_non_exhaustive()
    }
}

impl Context {
    pub fn new(client: Client, metrics: Arc<Metrics>, instance: Option<String>) -> Self {
        let reporter = Reporter {
            controller: FIELD_MANAGER.into(),
            instance,
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap_or_default(),
        }
    }

    async fn event(
        &self,
        mp: &MessagePipeline,
        type_: EventType,
        reason: &str,
        note: String,
        action: &str,
    ) {
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: action.into(),
            secondary: None,
        };
        if let Err(error) = self.recorder.publish(&event, &mp.object_ref(&())).await {
            tracing::warn!(%error, reason, "publishing an Event failed");
        }
    }
}

/// Runs the controller until `shutdown`.
pub async fn run(ctx: Arc<Context>, namespace: Option<String>, shutdown: CancellationToken) {
    let client = ctx.client.clone();
    let (pipelines, deployments, leases) = match &namespace {
        Some(ns) => (
            Api::<DeserializeGuard<MessagePipeline>>::namespaced(client.clone(), ns),
            Api::<Deployment>::namespaced(client.clone(), ns),
            Api::<Lease>::namespaced(client.clone(), ns),
        ),
        None => (
            Api::all(client.clone()),
            Api::all(client.clone()),
            Api::all(client.clone()),
        ),
    };
    let managed =
        watcher::Config::default().labels(&format!("app.kubernetes.io/managed-by={FIELD_MANAGER}"));
    // Worker Leases: react to annotation changes (ready, breaker) and to new or deleted Leases,
    // not to renewals, which change only the spec's renewTime.
    let lease_changes = watcher(
        leases,
        watcher::Config::default().labels(lease::LABEL_PIPELINE),
    )
    .default_backoff()
    .touched_objects()
    .predicate_filter(predicates::annotations, Default::default());
    Controller::new(pipelines, watcher::Config::default())
        // Each reconcile opens Kafka and HTTP clients: a bounded number at once keeps memory
        // flat when many pipelines change together (e.g. at start).
        .with_config(kube::runtime::controller::Config::default().concurrency(CONCURRENCY))
        .owns(deployments, managed)
        .watches_stream(lease_changes, |l: Lease| {
            let name = l.labels().get(lease::LABEL_PIPELINE)?.clone();
            Some(ObjectRef::new(&name).within(&l.namespace()?))
        })
        .graceful_shutdown_on(shutdown.cancelled_owned())
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "reconcile did not complete");
            }
        })
        .await;
}

fn error_policy(
    _: Arc<DeserializeGuard<MessagePipeline>>,
    error: &Error,
    ctx: Arc<Context>,
) -> Action {
    tracing::warn!(%error, "reconcile failed; retrying");
    ctx.metrics.reconcile_errors.inc();
    Action::requeue(Duration::from_secs(10))
}

async fn reconcile(
    guard: Arc<DeserializeGuard<MessagePipeline>>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    ctx.metrics.reconciles.inc();
    let mp = match &guard.0 {
        Ok(mp) => Arc::new(mp.clone()),
        Err(invalid) => {
            // Not even our type: say so on the resource and wait for an edit.
            let name = invalid.metadata.name.clone().unwrap_or_default();
            let namespace = invalid.metadata.namespace.clone().unwrap_or_default();
            tracing::warn!(%name, %namespace, error = %invalid.error, "MessagePipeline does not match the schema");
            let api: Api<MessagePipeline> = Api::namespaced(ctx.client.clone(), &namespace);
            let status = status::refused(
                "InvalidSpec",
                std::slice::from_ref(&invalid.error),
                &MessagePipelineStatus::default(),
                invalid.metadata.generation,
                Timestamp::now(),
            );
            let patch = serde_json::json!({"apiVersion": "messagepipeline.io/v1alpha1", "kind": "MessagePipeline", "status": status});
            api.patch_status(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await?;
            return Ok(Action::await_change());
        }
    };
    let namespace = mp.namespace().unwrap_or_default();
    let api: Api<MessagePipeline> = Api::namespaced(ctx.client.clone(), &namespace);
    let paused = mp
        .annotations()
        .get(PAUSED_ANNOTATION)
        .is_some_and(|v| v == "true");
    if paused && mp.metadata.deletion_timestamp.is_none() {
        tracing::info!(name = %mp.name_any(), "paused: not reconciling");
        return Ok(Action::await_change());
    }
    finalizer(&api, FINALIZER, mp, |event| async {
        match event {
            Finalizer::Apply(mp) => apply(&mp, &ctx).await,
            Finalizer::Cleanup(mp) => cleanup(&mp, &ctx).await,
        }
    })
    .await
    .map_err(|e| match e {
        kube::runtime::finalizer::Error::ApplyFailed(e)
        | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
        other => Error::Finalizer(other.to_string()),
    })
}

/// Writes `status` unless it equals `previous` (the status as stored, see [`stored_status`]).
async fn write_status(
    ctx: &Context,
    mp: &MessagePipeline,
    previous: &MessagePipelineStatus,
    status: MessagePipelineStatus,
) -> Result<(), Error> {
    if previous == &status {
        return Ok(());
    }
    let api: Api<MessagePipeline> =
        Api::namespaced(ctx.client.clone(), &mp.namespace().unwrap_or_default());
    let patch = serde_json::json!({"apiVersion": "messagepipeline.io/v1alpha1", "kind": "MessagePipeline", "status": status});
    api.patch_status(
        &mp.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

/// The status as the API server holds it now. The cached object a reconcile runs with may
/// predate this operator's own last status write (a reconcile queued by a child's event runs
/// with the store as it was then); computing from it would move every `lastTransitionTime`
/// without a change, and write again.
async fn stored_status(
    ctx: &Context,
    mp: &MessagePipeline,
) -> Result<MessagePipelineStatus, Error> {
    let api: Api<MessagePipeline> =
        Api::namespaced(ctx.client.clone(), &mp.namespace().unwrap_or_default());
    Ok(api
        .get_status(&mp.name_any())
        .await?
        .status
        .unwrap_or_default())
}

/// One reconcile of a live pipeline, in its steps: refuse what is invalid or claimed, apply the
/// children, reconcile the topics and the index, read lag and DLQ depth, report the status.
async fn apply(mp: &MessagePipeline, ctx: &Context) -> Result<Action, Error> {
    let now = Timestamp::now();
    let previous = stored_status(ctx, mp).await?;
    if let Some(action) = refuse(mp, ctx, &previous, now).await? {
        return Ok(action);
    }
    let namespace = mp.namespace().unwrap_or_default();
    let applied = apply_children(&ctx.client, &namespace, children(mp)).await?;
    let creds = kafka_credentials(ctx, mp).await?;
    let config = kafka::client_config(&mp.spec.kafka, &creds);
    let topics = reconcile_topics(ctx, mp, &config).await;
    let template = reconcile_index(ctx, mp).await;
    let (consumer_lag, dlq_depth) = lag_and_depth(mp, config).await;
    let observed = Observed {
        generation: mp.metadata.generation,
        topics,
        template,
        api_available: availability(&applied.api),
        indexer_available: availability(&applied.indexer),
        workers: live_workers(ctx, mp, now).await?,
        consumer_lag,
        dlq_depth,
    };
    report(ctx, mp, &previous, &observed, now).await?;
    Ok(Action::requeue(REQUEUE))
}

/// A spec that is invalid, or claims what another pipeline holds, gets a refusal in its status
/// and an Event; `Some` is then what the reconcile returns.
async fn refuse(
    mp: &MessagePipeline,
    ctx: &Context,
    previous: &MessagePipelineStatus,
    now: Timestamp,
) -> Result<Option<Action>, Error> {
    let problems = validate::validate(mp);
    let (reason, problems, action) = if problems.is_empty() {
        let all = Api::<MessagePipeline>::all(ctx.client.clone())
            .list(&ListParams::default())
            .await?;
        let conflicts = validate::conflicts(mp, &all.items);
        if conflicts.is_empty() {
            return Ok(None);
        }
        // Another pipeline may let go of its claim: look again.
        ("ResourceConflict", conflicts, Action::requeue(REQUEUE))
    } else {
        ("InvalidSpec", problems, Action::await_change())
    };
    ctx.event(
        mp,
        EventType::Warning,
        reason,
        problems.join("; "),
        "Validate",
    )
    .await;
    let refused = status::refused(reason, &problems, previous, mp.metadata.generation, now);
    write_status(ctx, mp, previous, refused).await?;
    Ok(Some(action))
}

/// The topics as the spec says, each change an Event; `Err` is the condition's message.
async fn reconcile_topics(
    ctx: &Context,
    mp: &MessagePipeline,
    config: &rdkafka::ClientConfig,
) -> Result<Vec<String>, String> {
    match kafka::ensure_topics(config, &kafka::wanted(&mp.spec)).await {
        Ok(report) => {
            for (what, list) in [
                ("TopicCreated", &report.created),
                ("TopicPartitionsAdded", &report.partitions_added),
                ("TopicConfigReverted", &report.reverted),
            ] {
                if !list.is_empty() {
                    ctx.event(
                        mp,
                        EventType::Normal,
                        what,
                        list.join(", "),
                        "ReconcileTopics",
                    )
                    .await;
                }
            }
            Ok(report.notes)
        }
        Err(error) => {
            let message = error.to_string();
            ctx.event(
                mp,
                EventType::Warning,
                "KafkaError",
                message.clone(),
                "ReconcileTopics",
            )
            .await;
            Err(message)
        }
    }
}

/// The index template, first index and alias in place, a change an Event; `Err` is the
/// condition's message.
async fn reconcile_index(ctx: &Context, mp: &MessagePipeline) -> Result<(), String> {
    match install_index(ctx, mp).await {
        Ok(changed) => {
            if changed {
                let note = "index template, first index or alias installed or reverted";
                ctx.event(
                    mp,
                    EventType::Normal,
                    "IndexTemplateInstalled",
                    note.into(),
                    "ReconcileIndex",
                )
                .await;
            }
            Ok(())
        }
        Err(error) => {
            let message = error.to_string();
            ctx.event(
                mp,
                EventType::Warning,
                "SearchEngineError",
                message.clone(),
                "ReconcileIndex",
            )
            .await;
            Err(message)
        }
    }
}

/// The indexer group's lag and the DLQ's depth (`None` each when not readable); the admin
/// calls block, so they run off the async threads.
async fn lag_and_depth(
    mp: &MessagePipeline,
    config: rdkafka::ClientConfig,
) -> (Option<i64>, Option<i64>) {
    let group = mp.spec.kafka.consumer_group.clone();
    let topic = mp.spec.kafka.topic.name.clone();
    let dlq = mp.spec.kafka.dlq_name();
    tokio::task::spawn_blocking(move || kafka::lag_and_depth(&config, &group, &topic, &dlq))
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or((None, None))
}

/// (available replicas, desired) of a Deployment as the API server answered the apply.
fn availability(d: &Deployment) -> Option<(i32, i32)> {
    let desired = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let available = d
        .status
        .as_ref()
        .and_then(|s| s.available_replicas)
        .unwrap_or(0);
    Some((available, desired))
}

/// Writes the status `observed` means, with an Event when readiness flips.
async fn report(
    ctx: &Context,
    mp: &MessagePipeline,
    previous: &MessagePipelineStatus,
    observed: &Observed,
    now: Timestamp,
) -> Result<(), Error> {
    let new_status = status::status(observed, &previous.conditions, now);
    let ready = |s: &MessagePipelineStatus| {
        s.conditions
            .iter()
            .find(|c| c.type_ == condition::READY)
            .cloned()
    };
    let was_ready = ready(previous).is_some_and(|c| c.status == "True");
    if let Some(now_ready) = ready(&new_status)
        && was_ready != (now_ready.status == "True")
    {
        let type_ = if was_ready {
            EventType::Warning
        } else {
            EventType::Normal
        };
        ctx.event(
            mp,
            type_,
            &now_ready.reason,
            now_ready.message,
            "UpdateStatus",
        )
        .await;
    }
    write_status(ctx, mp, previous, new_status).await
}

/// Server-side applies every child; returns the two Deployments as the API server has them.
pub async fn apply_children(
    client: &Client,
    namespace: &str,
    c: Children,
) -> Result<PerRole<Deployment>, Error> {
    async fn ssa<K>(client: &Client, namespace: &str, obj: &K) -> Result<K, Error>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + std::fmt::Debug
            + Serialize
            + DeserializeOwned,
    {
        let api: Api<K> = Api::namespaced(client.clone(), namespace);
        let params = PatchParams::apply(FIELD_MANAGER).force();
        Ok(api
            .patch(&obj.name_any(), &params, &Patch::Apply(obj))
            .await?)
    }
    ssa::<ServiceAccount>(client, namespace, &c.service_account).await?;
    ssa::<Role>(client, namespace, &c.role).await?;
    ssa::<RoleBinding>(client, namespace, &c.role_binding).await?;
    let deployments = PerRole {
        api: ssa::<Deployment>(client, namespace, &c.deployments.api).await?,
        indexer: ssa::<Deployment>(client, namespace, &c.deployments.indexer).await?,
    };
    for s in &c.services {
        ssa::<Service>(client, namespace, s).await?;
    }
    for p in &c.pdbs {
        ssa::<PodDisruptionBudget>(client, namespace, p).await?;
    }
    Ok(deployments)
}

async fn secret_value(
    ctx: &Context,
    namespace: &str,
    name: &str,
    key: &str,
) -> Result<String, Error> {
    let secret = Api::<Secret>::namespaced(ctx.client.clone(), namespace)
        .get_opt(name)
        .await?
        .ok_or_else(|| Error::Secret {
            name: name.into(),
            problem: "not found".into(),
        })?;
    let bytes = secret
        .data
        .and_then(|mut d| d.remove(key))
        .ok_or_else(|| Error::Secret {
            name: name.into(),
            problem: format!("has no key `{key}`"),
        })?;
    String::from_utf8(bytes.0).map_err(|_| Error::Secret {
        name: name.into(),
        problem: format!("key `{key}` is not UTF-8"),
    })
}

async fn kafka_credentials(ctx: &Context, mp: &MessagePipeline) -> Result<Credentials, Error> {
    let ns = mp.namespace().unwrap_or_default();
    let mut creds = Credentials::default();
    if let Some(sasl) = &mp.spec.kafka.sasl {
        let c = &sasl.credentials_secret_ref;
        creds.sasl = Some((
            secret_value(ctx, &ns, &c.name, &c.username_key).await?,
            secret_value(ctx, &ns, &c.name, &c.password_key).await?,
        ));
    }
    if let Some(tls) = &mp.spec.kafka.tls {
        creds.ca_pem =
            Some(secret_value(ctx, &ns, &tls.ca_secret_ref.name, &tls.ca_secret_ref.key).await?);
    }
    Ok(creds)
}

async fn search_endpoint(
    ctx: &Context,
    mp: &MessagePipeline,
) -> Result<(reqwest::Client, SearchEndpoint), Error> {
    let ns = mp.namespace().unwrap_or_default();
    let es = &mp.spec.elasticsearch;
    let mut endpoint = SearchEndpoint::new(es.url.clone());
    if let Some(c) = &es.credentials_secret_ref {
        endpoint = endpoint.with_basic_auth(
            secret_value(ctx, &ns, &c.name, &c.username_key).await?,
            secret_value(ctx, &ns, &c.name, &c.password_key).await?,
        );
    }
    let http = match &es.ca_secret_ref {
        None => ctx.http.clone(),
        Some(ca) => {
            let pem = secret_value(ctx, &ns, &ca.name, &ca.key).await?;
            let cert = reqwest::Certificate::from_pem(pem.as_bytes())
                .map_err(|e| Error::Search(format!("CA certificate: {e}")))?;
            reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .add_root_certificate(cert)
                .build()
                .map_err(|e| Error::Search(e.to_string()))?
        }
    };
    Ok((http, endpoint))
}

/// Installs template, first index and alias; `Ok(true)` when anything changed.
async fn install_index(ctx: &Context, mp: &MessagePipeline) -> Result<bool, Error> {
    let es = &mp.spec.elasticsearch;
    let layout = IndexLayout::new(es.alias.clone()).map_err(|e| Error::Search(e.to_string()))?;
    let settings = IndexSettings {
        shards: u32::try_from(es.shards).unwrap_or(1),
        replicas: u32::try_from(es.replicas).unwrap_or(1),
        refresh_interval: es.refresh_interval.clone(),
        gc_deletes: None,
    };
    let (http, endpoint) = search_endpoint(ctx, mp).await?;
    let report = install(&http, &endpoint, &layout, &settings)
        .await
        .map_err(|e| Error::Search(e.to_string()))?;
    Ok(report.changed())
}

/// Live workers of `mp` (this object, not an earlier one of the same name) from their Leases;
/// expired Leases are deleted.
async fn live_workers(
    ctx: &Context,
    mp: &MessagePipeline,
    now: Timestamp,
) -> Result<Vec<status::LiveWorker>, Error> {
    let api: Api<Lease> = Api::namespaced(ctx.client.clone(), &mp.namespace().unwrap_or_default());
    let leases = api
        .list(&ListParams::default().labels(&format!(
            "{}={}",
            lease::LABEL_PIPELINE,
            mp.name_any()
        )))
        .await?;
    let mut live = Vec::new();
    let uid = mp.uid();
    for l in &leases.items {
        if !status::of_pipeline(l, uid.as_deref()) {
            // An earlier object of the same name: its workers are stopping; the Lease is
            // deleted once it expires.
            if status::expired(l, now) {
                let _ = api.delete(&l.name_any(), &DeleteParams::default()).await;
            }
            continue;
        }
        match status::live_worker(l, now) {
            Some(w) => live.push(w),
            None => {
                tracing::info!(lease = %l.name_any(), "deleting an expired worker Lease");
                if let Err(error) = api.delete(&l.name_any(), &DeleteParams::default()).await {
                    tracing::warn!(%error, "deleting an expired Lease failed");
                }
            }
        }
    }
    Ok(live)
}

/// The finalizer's work: with `Delete`, remove the topics and the template; with `Retain`,
/// nothing. Children go with the resource through their owner references.
async fn cleanup(mp: &MessagePipeline, ctx: &Context) -> Result<Action, Error> {
    match mp.spec.deletion_policy {
        DeletionPolicy::Retain => {
            ctx.event(
                mp,
                EventType::Normal,
                "ExternalStateRetained",
                "deletionPolicy Retain: topics, index and template are left in place".into(),
                "Delete",
            )
            .await;
        }
        DeletionPolicy::Delete => {
            let creds = kafka_credentials(ctx, mp).await?;
            let config = kafka::client_config(&mp.spec.kafka, &creds);
            let names = vec![mp.spec.kafka.topic.name.clone(), mp.spec.kafka.dlq_name()];
            kafka::delete_topics(&config, &names).await?;
            let (http, endpoint) = search_endpoint(ctx, mp).await?;
            let layout = IndexLayout::new(mp.spec.elasticsearch.alias.clone())
                .map_err(|e| Error::Search(e.to_string()))?;
            let path = format!("/_index_template/{}", layout.template_name());
            let response = endpoint
                .request(&http, reqwest::Method::DELETE, &path)
                .send()
                .await
                .map_err(|e| Error::Search(e.to_string()))?;
            if !(response.status().is_success()
                || response.status() == reqwest::StatusCode::NOT_FOUND)
            {
                return Err(Error::Search(format!(
                    "deleting the index template: {}",
                    response.status()
                )));
            }
            ctx.event(
                mp,
                EventType::Normal,
                "ExternalStateDeleted",
                format!(
                    "deletionPolicy Delete: topics {} and the index template removed",
                    names.join(", ")
                ),
                "Delete",
            )
            .await;
        }
    }
    Ok(Action::await_change())
}

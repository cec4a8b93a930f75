//! The reconcile pipeline: validate → build (pure) → apply (server-side apply, owner references)
//! → external state (topics, index) → status. Plus the finalizer, the paused annotation, Events,
//! and the watches that trigger it.
//!
//! The operator is the only writer of MessagePipeline status; it writes it only when it changed,
//! so a quiet pipeline causes no writes at all.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::core::error_boundary::DeserializeGuard;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::store::Writer;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, predicates, watcher};
use kube::{Client, Resource, ResourceExt};
use messagepipeline_crd::{
    AuditStatus, FIELD_MANAGER, FINALIZER, IndexStatus, MessagePipeline, MessagePipelineStatus,
    PAUSED_ANNOTATION, PreviousIndexPolicy, condition,
};
use pipeline_contract::access::{self, Refused};
use pipeline_contract::install::{self, InstallError, SearchEndpoint, install};
use pipeline_contract::lease::AuditSummary;
use pipeline_contract::retry;
use pipeline_contract::search::{IndexLayout, IndexSettings, InvalidAlias, Owner};
use pipeline_contract::worker::{Role as WorkerRole, lease};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::apply;
use crate::audit;
use crate::build::{self, PerRole, children};
use crate::external;
use crate::kafka::{self, Credentials};
use crate::metrics::Metrics;
use crate::rebuild;
use crate::status::{self, Failure, Observed};
use crate::validate;

/// Reconciles running at once, unless the operator is told otherwise.
pub const CONCURRENCY: u16 = 8;

/// How often a healthy pipeline is looked at again (lag and Leases change without events).
pub const REQUEUE: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    #[error("Kafka: {0}")]
    Kafka(#[from] kafka::KafkaError),
    #[error("{0}")]
    Alias(#[from] InvalidAlias),
    #[error("search engine CA certificate: {0}")]
    SearchCa(#[source] reqwest::Error),
    #[error("search engine client: {0}")]
    SearchClient(#[source] reqwest::Error),
    #[error("search engine: {0}")]
    Install(#[from] InstallError),
    #[error("deleting the index template: {0}")]
    TemplateDelete(#[source] reqwest::Error),
    #[error("deleting the index template: the search engine answered {0}")]
    TemplateDeleteStatus(reqwest::StatusCode),
    /// The search engine's client could not be made (its Secret, its CA): said again for each
    /// step that needs it.
    #[error("{0}")]
    SearchAccess(String),
    #[error("secret {name}: {problem}")]
    Secret {
        name: String,
        problem: SecretProblem,
    },
}

/// What is wrong with a Secret the spec refers to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretProblem {
    #[error("not found")]
    NotFound,
    #[error("has no key `{0}`")]
    NoKey(String),
    #[error("key `{0}` is not UTF-8")]
    NotUtf8(String),
}

impl Error {
    /// The kind of failure, for the failure metric's label: a fixed word per variant.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Kube(_) => "kube",
            Self::Finalizer(_) => "finalizer",
            Self::Kafka(_) => "kafka",
            Self::Alias(_) => "invalid-alias",
            Self::SearchCa(_) => "search-ca",
            Self::SearchClient(_) => "search-client",
            Self::Install(_) => "search-install",
            Self::TemplateDelete(_) | Self::TemplateDeleteStatus(_) => "template-delete",
            Self::Secret { .. } => "secret",
            Self::SearchAccess(_) => "search-access",
        }
    }

    /// Whether no retry can succeed until the spec changes: the API server refused what the
    /// spec makes (400 or 422), a value of the spec cannot be used (the alias, a CA that is not
    /// a certificate). Everything else may pass on its own (a server back, a Secret created).
    pub fn is_invalid_spec(&self) -> bool {
        match self {
            Self::Kube(kube::Error::Api(status)) => matches!(status.code, 400 | 422),
            Self::Alias(_) | Self::SearchCa(_) => true,
            _ => false,
        }
    }
}

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub http: reqwest::Client,
    /// Failed reconciles in a row, per pipeline (namespace, name), for the backoff.
    failures: Mutex<HashMap<(String, String), u32>>,
    /// A cache of every MessagePipeline of the cluster, for the claims check; [`run`] fills it
    /// through `pipelines_writer`, which it takes.
    pipelines: Store<DeserializeGuard<MessagePipeline>>,
    pipelines_writer: Mutex<Option<Writer<DeserializeGuard<MessagePipeline>>>>,
    /// The fingerprint of each worker Deployment as last seen, by the watch or in the answer to
    /// this operator's own apply: an event showing what a reconcile already saw triggers none.
    deployments_seen: Fingerprints,
    /// Reconciles running at once ([`CONCURRENCY`] unless [`Context::with_concurrency`]).
    concurrency: u16,
    /// How each pipeline (by uid) last reached its clusters, for its cleanup when the Secrets
    /// that said how are gone (deleted with its namespace).
    reached: Mutex<HashMap<String, Reached>>,
}

/// How a pipeline's clusters were last reached.
#[derive(Clone, Default)]
pub(crate) struct Reached {
    pub kafka: Option<rdkafka::ClientConfig>,
    pub search: Option<Search>,
}

/// Fingerprints of objects by (namespace, name) (see [`relevant`]).
type Fingerprints = Arc<Mutex<HashMap<(Option<String>, String), u64>>>;

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
        let (pipelines, writer) = reflector::store();
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap_or_default(),
            failures: Mutex::new(HashMap::new()),
            pipelines,
            pipelines_writer: Mutex::new(Some(writer)),
            deployments_seen: Fingerprints::default(),
            concurrency: CONCURRENCY,
            reached: Mutex::default(),
        }
    }

    /// At most `n` reconciles at once (at least one).
    #[must_use]
    pub fn with_concurrency(mut self, n: u16) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// Notes how `mp` reached its clusters (what could be made of its Secrets).
    fn remember(
        &self,
        mp: &MessagePipeline,
        kafka: Option<&rdkafka::ClientConfig>,
        search: Option<&Search>,
    ) {
        let Some(uid) = mp.uid() else { return };
        let mut reached = self.reached.lock().expect("reached");
        let entry = reached.entry(uid).or_default();
        if let Some(kafka) = kafka {
            entry.kafka = Some(kafka.clone());
        }
        if let Some(search) = search {
            entry.search = Some(search.clone());
        }
    }

    /// How `mp` last reached its clusters, forgotten (its cleanup is the last use).
    pub(crate) fn reached(&self, mp: &MessagePipeline) -> Reached {
        mp.uid()
            .and_then(|uid| self.reached.lock().expect("reached").get(&uid).cloned())
            .unwrap_or_default()
    }

    pub(crate) fn forget_reached(&self, mp: &MessagePipeline) {
        if let Some(uid) = mp.uid() {
            self.reached.lock().expect("reached").remove(&uid);
        }
    }

    /// Every MessagePipeline of the cluster as the claims cache has it.
    pub(crate) async fn pipelines(&self) -> Vec<MessagePipeline> {
        // Until its first list is complete the cache may miss the very pipeline that holds a
        // claim.
        let _ = self.pipelines.wait_until_ready().await;
        self.pipelines
            .state()
            .iter()
            .filter_map(|g| g.0.as_ref().ok().cloned())
            .collect()
    }

    /// Notes the Deployments as the API server answered this operator's apply of them.
    fn saw_deployments(&self, applied: &PerRole<Option<Deployment>>) {
        let mut seen = self.deployments_seen.lock().expect("deployments seen");
        for d in [&applied.api, &applied.indexer].into_iter().flatten() {
            seen.insert(
                (d.metadata.namespace.clone(), d.name_any()),
                deployment_fingerprint(d),
            );
        }
    }

    fn key(obj: &DeserializeGuard<MessagePipeline>) -> (String, String) {
        (obj.namespace().unwrap_or_default(), obj.name_any())
    }

    /// Counts a failure of `obj`'s reconcile; returns the failures in a row.
    fn failed(&self, obj: &DeserializeGuard<MessagePipeline>) -> u32 {
        let mut failures = self.failures.lock().expect("failures");
        let n = failures.entry(Self::key(obj)).or_insert(0);
        *n = n.saturating_add(1);
        *n
    }

    fn succeeded(&self, obj: &DeserializeGuard<MessagePipeline>) {
        self.failures
            .lock()
            .expect("failures")
            .remove(&Self::key(obj));
    }

    pub(crate) async fn event(
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
    let (pipelines, deployments, jobs, leases) = match &namespace {
        Some(ns) => (
            Api::<DeserializeGuard<MessagePipeline>>::namespaced(client.clone(), ns),
            Api::<Deployment>::namespaced(client.clone(), ns),
            Api::<Job>::namespaced(client.clone(), ns),
            Api::<Lease>::namespaced(client.clone(), ns),
        ),
        None => (
            Api::all(client.clone()),
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
    // Claims are cluster-wide (topics, index aliases), whichever namespaces this controller
    // reconciles: a cache of every MessagePipeline answers the claims check.
    let Some(writer) = ctx.pipelines_writer.lock().expect("claims writer").take() else {
        tracing::error!("this Context already runs a controller; not starting another");
        return;
    };
    let claims = reflector::reflector(
        writer,
        watcher(
            Api::<DeserializeGuard<MessagePipeline>>::all(client.clone()),
            watcher::Config::default(),
        ),
    )
    .default_backoff()
    .for_each(|_| std::future::ready(()));
    // Only changes a reconcile acts on trigger one: not the operator's own status writes, nor a
    // Deployment's bookkeeping (observedGeneration, conditions' heartbeats). Each of those was a
    // whole reconcile more per pipeline: 200 new pipelines took ~750 reconciles, not ~200.
    let (store, writer) = reflector::store();
    let pipeline_changes = relevant(
        watcher(pipelines, watcher::Config::default())
            .default_backoff()
            .reflect(writer),
        pipeline_fingerprint,
        Fingerprints::default(),
        true,
    );
    let deployment_changes = relevant(
        watcher(deployments, managed.clone()).default_backoff(),
        deployment_fingerprint,
        Arc::clone(&ctx.deployments_seen),
        false,
    );
    let controller = Controller::for_stream(pipeline_changes, store)
        // Each reconcile opens Kafka and HTTP clients: a bounded number at once keeps memory
        // flat when many pipelines change together (e.g. at start).
        .with_config(kube::runtime::controller::Config::default().concurrency(ctx.concurrency))
        .owns_stream(deployment_changes)
        // A rebuild Job's end (the Lease says its progress).
        .owns(jobs, managed)
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
        });
    // The claims cache lives as long as the controller (which ends on `shutdown`).
    tokio::select! {
        () = controller => {}
        () = claims => {}
    }
}

/// The objects of `events` whose `fingerprint` differs from the one in `seen` (last seen by
/// this stream, or noted by a reconcile), and every deleted one (a deletion changes no field a
/// fingerprint could see). An object seen for the first time passes when `first_sight` says
/// so: a new pipeline must be reconciled, a new child is the echo of the reconcile that made it
/// (at start-up every pipeline is reconciled anyway).
fn relevant<K, S>(
    events: S,
    fingerprint: fn(&K) -> u64,
    seen: Fingerprints,
    first_sight: bool,
) -> impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: Resource + Send + 'static,
    S: futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
{
    events.filter_map(move |event| {
        let mut seen = seen.lock().expect("fingerprints");
        let changed = match event {
            Ok(watcher::Event::Apply(obj) | watcher::Event::InitApply(obj)) => {
                let key = (obj.meta().namespace.clone(), obj.name_any());
                let print = fingerprint(&obj);
                match seen.insert(key, print) {
                    None => first_sight,
                    Some(before) => before != print,
                }
                .then_some(Ok(obj))
            }
            Ok(watcher::Event::Delete(obj)) => {
                seen.remove(&(obj.meta().namespace.clone(), obj.name_any()));
                Some(Ok(obj))
            }
            Ok(watcher::Event::Init | watcher::Event::InitDone) => None,
            Err(error) => Some(Err(error)),
        };
        std::future::ready(changed)
    })
}

fn hash_of(value: &impl std::hash::Hash) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    BuildHasherDefault::<DefaultHasher>::default().hash_one(value)
}

/// What of a pipeline a reconcile acts on: its spec (the generation, which a deletion bumps
/// too), finalizers, labels and annotations (the pause). Not its status: the operator's own.
fn pipeline_fingerprint(mp: &DeserializeGuard<MessagePipeline>) -> u64 {
    let meta = mp.meta();
    hash_of(&(
        meta.generation,
        &meta.finalizers,
        &meta.labels,
        &meta.annotations,
    ))
}

/// What of a worker Deployment a reconcile acts on or reports: its spec (generation, replicas),
/// how far its controller has taken it up (observed generation, replica counts) and whether
/// its rollout passed the progress deadline.
fn deployment_fingerprint(d: &Deployment) -> u64 {
    let status = d.status.as_ref();
    let progressing = status
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Progressing"))
        .map(|c| (c.status.clone(), c.reason.clone()));
    hash_of(&(
        d.metadata.generation,
        d.spec.as_ref().and_then(|s| s.replicas),
        status.and_then(|s| s.observed_generation),
        status.and_then(|s| s.replicas),
        status.and_then(|s| s.ready_replicas),
        status.and_then(|s| s.available_replicas),
        status.and_then(|s| s.updated_replicas),
        status.and_then(|s| s.unavailable_replicas),
        progressing,
    ))
}

/// A failed reconcile: an invalid spec waits for the spec to change (its condition says why);
/// anything else is retried after a backoff that grows with the failures in a row of this
/// pipeline, with jitter, so that many pipelines failing together (Kafka down) do not retry
/// together.
fn error_policy(
    guard: Arc<DeserializeGuard<MessagePipeline>>,
    error: &Error,
    ctx: Arc<Context>,
) -> Action {
    ctx.metrics.failed(error.metric_label());
    if error.is_invalid_spec() {
        tracing::warn!(%error, name = %guard.name_any(), "reconcile failed on the spec; waiting for it to change");
        return Action::await_change();
    }
    let failures = ctx.failed(&guard);
    let delay = backoff(failures, fastrand::f64());
    tracing::warn!(%error, name = %guard.name_any(), failures, ?delay, "reconcile failed; retrying");
    Action::requeue(delay)
}

/// The first retry of a failing pipeline comes after about this long; each failure in a row
/// doubles it, up to [`MAX_BACKOFF`].
const BASE_BACKOFF: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// The wait after `failures` failures in a row: half of `min(MAX, BASE * 2^(failures-1))` plus a
/// random part of the other half (`random` in `[0, 1)`): never a hot loop, never in lockstep.
fn backoff(failures: u32, random: f64) -> Duration {
    retry::ceiling(failures, BASE_BACKOFF, MAX_BACKOFF) / 2
        + retry::delay(failures, BASE_BACKOFF / 2, MAX_BACKOFF / 2, random)
}

/// One reconcile, timed; a success ends the pipeline's run of failures.
async fn reconcile(
    guard: Arc<DeserializeGuard<MessagePipeline>>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    ctx.metrics.reconciles.inc();
    let started = std::time::Instant::now();
    let meta = match &guard.0 {
        Ok(mp) => &mp.metadata,
        Err(invalid) => &invalid.metadata,
    };
    let span = tracing::info_span!(
        parent: None,
        "reconcile",
        otel.name = "reconcile MessagePipeline",
        otel.kind = "internal",
        otel.status_code = tracing::field::Empty,
        k8s.namespace.name = meta.namespace.as_deref().unwrap_or_default(),
        messagepipeline.name = meta.name.as_deref().unwrap_or_default(),
        messagepipeline.generation = meta.generation.unwrap_or_default(),
        error.type = tracing::field::Empty,
    );
    let result = reconcile_guarded(guard.clone(), ctx.clone())
        .instrument(span.clone())
        .await;
    if let Err(error) = &result {
        span.record("otel.status_code", "ERROR");
        span.record("error.type", tracing::field::display(error));
    }
    ctx.metrics
        .reconcile_duration
        .observe(started.elapsed().as_secs_f64());
    if result.is_ok() {
        ctx.succeeded(&guard);
    }
    result
}

async fn reconcile_guarded(
    guard: Arc<DeserializeGuard<MessagePipeline>>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
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
            Finalizer::Cleanup(mp) => crate::cleanup::cleanup(&mp, &ctx).await,
        }
    })
    .await
    .map_err(|e| match e {
        kube::runtime::finalizer::Error::ApplyFailed(e)
        | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
        other => Error::Finalizer(Box::new(other)),
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

/// The search engine as the operator reaches it: a client (with the spec's CA) and the endpoint
/// (with the operator's credentials).
pub(crate) type Search = (reqwest::Client, SearchEndpoint);

/// One reconcile of a live pipeline, in its steps: refuse what is invalid or claimed, apply the
/// children, reconcile the topics and the index, read lag and DLQ depth, report the status.
async fn apply(mp: &MessagePipeline, ctx: &Context) -> Result<Action, Error> {
    let now = Timestamp::now();
    let previous = stored_status(ctx, mp).await?;
    let Admitted {
        kafka_config,
        search,
        mut external,
    } = match admit(mp, ctx, &previous, now).await? {
        Ok(admitted) => admitted,
        Err(action) => return Ok(action),
    };
    let namespace = mp.namespace().unwrap_or_default();
    // A pipeline that had an index does not get an empty one when it is lost: a rebuild fills it.
    let had_index = previous.index.as_ref().and_then(|i| i.generation).is_some();
    let wanted = children(mp);
    let config = kafka_config?;
    // The supporting children, the topics and the index are independent: reconciled together.
    let (support, topics, template) = tokio::join!(
        apply::support(&ctx.client, &namespace, &wanted),
        reconcile_topics(ctx, mp, &config),
        reconcile_index(ctx, mp, had_index, &search)
    );
    support?;
    if let Ok(report) = &topics {
        (external.topics, external.topics_lost) =
            external::topics_of(mp, &previous, &report.created, &now.to_string());
    }
    // The workers once what they need exists (module `apply`).
    let prerequisites = topics.is_ok() && template.is_ok();
    let applied =
        apply::deployments(&ctx.client, &namespace, &wanted.deployments, prerequisites).await?;
    // At once: the watch's events of these Deployments are on their way.
    ctx.saw_deployments(&applied);
    let (lag, workers) = tokio::join!(lag_and_depth(mp, config), live_workers(ctx, mp, now));
    let ((consumer_lag, dlq_depth), (workers, audit_summary)) = (lag, workers?);
    let index = match (&template, &search) {
        (Ok(()), Ok(search)) => reconcile_rebuild(ctx, mp, search, &previous, &workers, now).await,
        _ => None,
    };
    let audit = reconcile_audit(ctx, mp, &previous, audit_summary).await;
    let observed = Observed {
        generation: mp.metadata.generation,
        topics: topics.map(|report| report.notes),
        template,
        api_available: applied.api.as_ref().and_then(availability),
        indexer_available: applied.indexer.as_ref().and_then(availability),
        workers,
        consumer_lag,
        dlq_depth,
        index,
        audit,
        external,
    };
    report(ctx, mp, &previous, &observed, now).await?;
    Ok(Action::requeue(REQUEUE))
}

/// What a reconcile that may touch the clusters starts from.
struct Admitted {
    kafka_config: Result<rdkafka::ClientConfig, Error>,
    search: Result<Search, Error>,
    /// The status's record of the clusters, with the identities at the spec's addresses.
    external: messagepipeline_crd::ExternalStatus,
}

/// Before anything is touched: the spec's rules, the connections its Secrets make, the
/// clusters' identities, and the claims; `Err` is the action of a refused pipeline (its status
/// written).
async fn admit(
    mp: &MessagePipeline,
    ctx: &Context,
    previous: &MessagePipelineStatus,
    now: Timestamp,
) -> Result<Result<Admitted, Action>, Error> {
    let problems = validate::validate(mp);
    if !problems.is_empty() {
        let refusal = ("InvalidSpec", problems);
        let external = previous.external.clone();
        let action = Action::await_change();
        return refuse(mp, ctx, previous, external, refusal, action, now)
            .await
            .map(Err);
    }
    let kafka_config = kafka_credentials(ctx, mp)
        .await
        .map(|creds| kafka::client_config(&mp.spec.kafka, &creds));
    let search = search_endpoint(ctx, mp).await;
    ctx.remember(mp, kafka_config.as_ref().ok(), search.as_ref().ok());
    let external = external::identified(ctx, mp, &previous.external, &kafka_config, &search).await;
    if let Some(refusal) = claims(mp, ctx, &external).await {
        // Another pipeline may let go of its claim, or its identity be read: look again.
        let action = Action::requeue(REQUEUE);
        return refuse(mp, ctx, previous, external, refusal, action, now)
            .await
            .map(Err);
    }
    Ok(Ok(Admitted {
        kafka_config,
        search,
        external,
    }))
}

/// The refusal of a pipeline that claims what an older one holds on the same cluster (or on
/// one that may be the same: decided once both identities are read): its reason and problems.
async fn claims(
    mp: &MessagePipeline,
    ctx: &Context,
    external: &messagepipeline_crd::ExternalStatus,
) -> Option<(&'static str, Vec<String>)> {
    let all = ctx.pipelines().await;
    let mine = validate::Clusters::recorded(mp, Some(external));
    let conflicts = validate::conflicts(mp, &mine, &all);
    if conflicts.is_empty() {
        None
    } else if conflicts.held.is_empty() {
        Some(("ClaimUndecided", conflicts.undecided))
    } else {
        Some((
            "ResourceConflict",
            [conflicts.held, conflicts.undecided].concat(),
        ))
    }
}

/// A spec that is invalid, or claims what another pipeline holds, gets a refusal in its status
/// (with the clusters' identities as read) and an Event; the reconcile then returns `action`.
async fn refuse(
    mp: &MessagePipeline,
    ctx: &Context,
    previous: &MessagePipelineStatus,
    external: messagepipeline_crd::ExternalStatus,
    (reason, problems): (&str, Vec<String>),
    action: Action,
    now: Timestamp,
) -> Result<Action, Error> {
    ctx.event(
        mp,
        EventType::Warning,
        reason,
        problems.join("; "),
        "Validate",
    )
    .await;
    let mut refused = status::refused(reason, &problems, previous, mp.metadata.generation, now);
    refused.external = external;
    write_status(ctx, mp, previous, refused).await?;
    Ok(action)
}

/// The topics as the spec says, each change an Event; `Err` is the condition's
/// reason and message (the refusal, when Kafka refused the operator).
async fn reconcile_topics(
    ctx: &Context,
    mp: &MessagePipeline,
    config: &rdkafka::ClientConfig,
) -> Result<kafka::TopicReport, Failure> {
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
            Ok(report)
        }
        Err(error) => {
            let failure = match error.refusal() {
                Some(refused) => Failure::refused(refused),
                None => Failure::new("KafkaError", error.to_string()),
            };
            ctx.event(
                mp,
                EventType::Warning,
                &failure.reason,
                failure.message.clone(),
                "ReconcileTopics",
            )
            .await;
            Err(failure)
        }
    }
}

/// The index template, first index and alias in place, a change an Event; `Err` is the
/// condition's reason and message (the refusal, when the engine refused the operator).
async fn reconcile_index(
    ctx: &Context,
    mp: &MessagePipeline,
    had_index: bool,
    search: &Result<Search, Error>,
) -> Result<(), Failure> {
    let installed = match search {
        Ok(search) => install_index(mp, had_index, search).await,
        Err(error) => Err(Error::SearchAccess(error.to_string())),
    };
    match installed {
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
            let failure = match &error {
                Error::Install(e) if let Some(cause) = e.cause() => {
                    Failure::refused(&Refused::new(
                        access::Service::Search,
                        cause,
                        &mp.spec.elasticsearch.url,
                        e.to_string(),
                    ))
                }
                _ => Failure::new("SearchEngineError", error.to_string()),
            };
            ctx.event(
                mp,
                EventType::Warning,
                &failure.reason,
                failure.message.clone(),
                "ReconcileIndex",
            )
            .await;
            Err(failure)
        }
    }
}

/// What `spec.elasticsearch.indexGeneration` asks of the index, done (module `rebuild`): the
/// next generation and its Job started, the alias swapped when the Job awaits it, previous
/// indices deleted by the policy; each an Event. `None` when the engine could not be read.
async fn reconcile_rebuild(
    ctx: &Context,
    mp: &MessagePipeline,
    (http, endpoint): &Search,
    previous: &MessagePipelineStatus,
    workers: &[status::LiveWorker],
    now: Timestamp,
) -> Option<(IndexStatus, rebuild::Verdict)> {
    let es = &mp.spec.elasticsearch;
    let layout = IndexLayout::new(es.alias.clone()).ok()?;
    let alias = match install::read_alias(http, endpoint, &layout).await {
        Ok(alias) => alias.unwrap_or_default(),
        Err(error) => {
            tracing::warn!(%error, "reading the alias for the rebuild status");
            return None;
        }
    };
    let wanted = es.index_generation.unwrap_or(1);
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &mp.namespace().unwrap_or_default());
    let job = jobs
        .get_opt(&build::rebuild_job_name(mp, wanted))
        .await
        .ok()?;
    let now_text = now.to_string();
    // Only a settled index can be outdated: a rebuild in flight makes the new mapping.
    let outdated = if job.is_none() && !alias.is_empty() {
        install::outdated_indices(http, endpoint, &layout, &alias)
            .await
            .unwrap_or_else(|error| {
                tracing::warn!(%error, "comparing the index mappings with the template");
                Vec::new()
            })
    } else {
        Vec::new()
    };
    let decision = rebuild::decide(&rebuild::Observed {
        layout: &layout,
        wanted,
        alias: &alias,
        job: job.as_ref().map(rebuild::JobState::of),
        progress: workers
            .iter()
            .filter_map(|w| w.rebuild.as_ref())
            .find(|p| p.generation == wanted),
        stored: previous.index.as_ref().and_then(|i| i.rebuild.as_ref()),
        delete_previous: es.previous_index_policy == PreviousIndexPolicy::Delete,
        outdated: &outdated,
        known: previous.index.as_ref().and_then(|i| i.generation),
        now: &now_text,
    });
    let (index, mut verdict) = (decision.index, decision.verdict);
    let engine = (http, endpoint, &layout);
    for step in decision.steps {
        let (reason, done) = rebuild_step(mp, engine, &jobs, wanted, &step).await;
        match done {
            Ok(note) => {
                ctx.event(mp, EventType::Normal, reason, note, "Rebuild")
                    .await
            }
            Err(error) => {
                verdict = rebuild::Verdict {
                    running: Some(false),
                    reason: "RebuildStepFailed".into(),
                    message: format!("{reason}: {error}"),
                };
                let note = verdict.message.clone();
                ctx.event(mp, EventType::Warning, "RebuildStepFailed", note, "Rebuild")
                    .await;
            }
        }
    }
    rebuild_event(ctx, mp, previous, &verdict).await;
    Some((index, verdict))
}

/// An Event when the rebuild's verdict came to an end it was not at before (complete, failed,
/// refused, the index lost).
async fn rebuild_event(
    ctx: &Context,
    mp: &MessagePipeline,
    previous: &MessagePipelineStatus,
    verdict: &rebuild::Verdict,
) {
    let was = previous
        .conditions
        .iter()
        .find(|c| c.type_ == condition::REBUILDING)
        .map(|c| c.reason.as_str());
    let ends = [
        "RebuildComplete",
        "RebuildFailed",
        "GenerationNotNewer",
        rebuild::INDEX_LOST,
    ];
    if ends.contains(&verdict.reason.as_str()) && was != Some(verdict.reason.as_str()) {
        let type_ = if verdict.reason == "RebuildComplete" {
            EventType::Normal
        } else {
            EventType::Warning
        };
        let note = verdict.message.clone();
        ctx.event(mp, type_, &verdict.reason, note, "Rebuild").await;
    }
}

/// The last audit (module `audit`): the summary on the Lease `<pipeline>-audit` of this object
/// (read with the worker Leases), or the stored one when there is none; an Event and the metrics
/// when an audit finished since the stored status.
async fn reconcile_audit(
    ctx: &Context,
    mp: &MessagePipeline,
    previous: &MessagePipelineStatus,
    summary: Option<AuditSummary>,
) -> (Option<AuditStatus>, audit::InSync) {
    let namespace = mp.namespace().unwrap_or_default();
    let last = summary
        .map(|s| audit::status_of(&s))
        .or_else(|| previous.audit.clone());
    let verdict = audit::in_sync(mp.spec.audit.as_ref(), last.as_ref());
    if let Some(a) = &last {
        ctx.metrics.audited(&namespace, &mp.name_any(), a);
        let before = previous.audit.as_ref().map(|p| p.completion_time.as_str());
        if before != Some(a.completion_time.as_str()) {
            let type_ = if verdict.status == Some(true) {
                EventType::Normal
            } else {
                EventType::Warning
            };
            let note = verdict.message.clone();
            ctx.event(mp, type_, verdict.reason, note, "Audit").await;
        }
    }
    (last, verdict)
}

/// Does one step of a rebuild; its Event's reason, and its note or the error.
async fn rebuild_step(
    mp: &MessagePipeline,
    (http, endpoint, layout): (&reqwest::Client, &SearchEndpoint, &IndexLayout),
    jobs: &Api<Job>,
    generation: u32,
    step: &rebuild::Step,
) -> (&'static str, Result<String, Error>) {
    match step {
        rebuild::Step::Start => {
            let started = async {
                install::create_generation(http, endpoint, layout, generation).await?;
                let job = build::rebuild_job(mp, generation);
                match jobs.create(&PostParams::default(), &job).await {
                    Ok(_) => {}
                    // Created meanwhile (a second reconcile): the same Job.
                    Err(kube::Error::Api(e)) if e.code == 409 => {}
                    Err(e) => return Err(Error::from(e)),
                }
                Ok(format!(
                    "Job {} builds generation {generation}",
                    job.name_any()
                ))
            };
            ("RebuildStarted", started.await)
        }
        rebuild::Step::Swap { old } => (
            "IndexSwapped",
            install::swap_alias(http, endpoint, layout, generation, old)
                .await
                .map(|()| {
                    format!(
                        "the alias points at {} (was {})",
                        layout.index_of(generation),
                        old.join(", ")
                    )
                })
                .map_err(Error::from),
        ),
        rebuild::Step::DeletePrevious(old) => {
            for i in old {
                if let Err(e) = install::delete_index(http, endpoint, i).await {
                    return ("PreviousIndexDeleted", Err(Error::from(e)));
                }
            }
            ("PreviousIndexDeleted", Ok(old.join(", ")))
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

/// A Deployment's rollout as the API server answered the apply of its current spec.
fn availability(d: &Deployment) -> Option<status::Rollout> {
    let status = d.status.clone().unwrap_or_default();
    let stalled = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Progressing" && c.status == "False")
        .filter(|c| c.reason.as_deref() == Some("ProgressDeadlineExceeded"))
        .map(|c| c.message.clone().unwrap_or_default());
    Some(status::Rollout {
        desired: d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
        replicas: status.replicas.unwrap_or(0),
        updated: status.updated_replicas.unwrap_or(0),
        available: status.available_replicas.unwrap_or(0),
        observed: status.observed_generation >= d.metadata.generation,
        stalled,
    })
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

pub(crate) async fn secret_value(
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
            problem: SecretProblem::NotFound,
        })?;
    let bytes = secret
        .data
        .and_then(|mut d| d.remove(key))
        .ok_or_else(|| Error::Secret {
            name: name.into(),
            problem: SecretProblem::NoKey(key.into()),
        })?;
    String::from_utf8(bytes.0).map_err(|_| Error::Secret {
        name: name.into(),
        problem: SecretProblem::NotUtf8(key.into()),
    })
}

pub(crate) async fn kafka_credentials(
    ctx: &Context,
    mp: &MessagePipeline,
) -> Result<Credentials, Error> {
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

pub(crate) async fn search_endpoint(ctx: &Context, mp: &MessagePipeline) -> Result<Search, Error> {
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
            let cert = reqwest::Certificate::from_pem(pem.as_bytes()).map_err(Error::SearchCa)?;
            reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .add_root_certificate(cert)
                .build()
                .map_err(Error::SearchClient)?
        }
    };
    Ok((http, endpoint))
}

/// Installs template, first index and alias, marked as `mp`'s; `Ok(true)` when anything
/// changed.
async fn install_index(
    mp: &MessagePipeline,
    had_index: bool,
    (http, endpoint): &Search,
) -> Result<bool, Error> {
    let es = &mp.spec.elasticsearch;
    let layout = IndexLayout::new(es.alias.clone())?;
    let settings = IndexSettings {
        shards: u32::try_from(es.shards).unwrap_or(1),
        replicas: u32::try_from(es.replicas).unwrap_or(1),
        refresh_interval: es.refresh_interval.clone(),
        gc_deletes: None,
        owner: mp.uid().map(|uid| Owner {
            uid,
            name: format!("{}/{}", mp.namespace().unwrap_or_default(), mp.name_any()),
        }),
    };
    let report = if had_index {
        install::install_template(http, endpoint, &layout, &settings).await?
    } else {
        install(http, endpoint, &layout, &settings).await?
    };
    Ok(report.changed())
}

/// Live workers of `mp` (this object, not an earlier one of the same name) from their Leases,
/// and the last audit's summary from the same list; expired worker Leases are deleted.
async fn live_workers(
    ctx: &Context,
    mp: &MessagePipeline,
    now: Timestamp,
) -> Result<(Vec<status::LiveWorker>, Option<AuditSummary>), Error> {
    let api: Api<Lease> = Api::namespaced(ctx.client.clone(), &mp.namespace().unwrap_or_default());
    let leases = api
        .list(&ListParams::default().labels(&format!(
            "{}={}",
            lease::LABEL_PIPELINE,
            mp.name_any()
        )))
        .await?;
    let (mut live, mut audit) = (Vec::new(), None);
    let uid = mp.uid();
    for l in &leases.items {
        // The audit's summary is a record, not a worker: it stays until the next audit.
        if l.labels().get(lease::LABEL_ROLE).map(String::as_str) == Some(WorkerRole::Audit.as_str())
        {
            if status::of_pipeline(l, uid.as_deref()) {
                audit = audit.or_else(|| AuditSummary::from_lease(l));
            }
            continue;
        }
        if !status::of_pipeline(l, uid.as_deref()) {
            // An earlier object of the same name: its workers are stopping; the Lease is
            // deleted once it expires.
            if pipeline_contract::lease::expired(l, now) {
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
    Ok((live, audit))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_grows_with_failures_in_a_row_within_its_bounds_and_jitters() {
        // (failures, the range its wait falls in)
        let cases = [
            (0, 2_500, 5_000),
            (1, 2_500, 5_000),
            (2, 5_000, 10_000),
            (4, 20_000, 40_000),
            (7, 150_000, 300_000),
            (40, 150_000, 300_000),
        ];
        for (failures, low, high) in cases {
            let (lo, hi) = (backoff(failures, 0.0), backoff(failures, 0.999_999));
            assert_eq!(lo, Duration::from_millis(low), "{failures} failures");
            assert!(
                hi <= Duration::from_millis(high) && hi > lo,
                "{failures}: {hi:?}"
            );
        }
        assert_eq!(backoff(3, f64::NAN), backoff(3, 0.0));
    }

    #[test]
    fn only_what_the_spec_causes_waits_for_a_change() {
        let api = |code| {
            Error::Kube(kube::Error::Api(
                kube::core::Status::failure("refused", "Invalid")
                    .with_code(code)
                    .boxed(),
            ))
        };
        assert!(api(422).is_invalid_spec() && api(400).is_invalid_spec());
        assert!(!api(409).is_invalid_spec() && !api(500).is_invalid_spec());
        let secret = Error::Secret {
            name: "kafka-user".into(),
            problem: SecretProblem::NotFound,
        };
        assert!(!secret.is_invalid_spec());
        assert_eq!(secret.metric_label(), "secret");
        assert_eq!(api(422).metric_label(), "kube");
    }
}

//! Wiring: configuration to a running server, relay and purge, and an orderly stop.
//!
//! Start: load the keys (refuse to start on a bad file), connect to MongoDB and create the
//! indexes, create the producer, bind. Stop (SIGTERM): stop taking requests and finish the ones
//! in flight, then let the relay drain and persist (or, owing nothing, remove) its registration.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use pipeline_contract::time::Timestamp;
use tokio_util::sync::CancellationToken;

use crate::auth::{KeyStore, KeysFileError};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::outbox::Outbox;
use crate::relay::Relay;
use crate::routes::{AppState, Authenticator, router};
use pipeline_contract::search_client::SearchAccessError;

use crate::search::SearchClient;
use crate::service::Messages;
use crate::store::{Store, StoreError};

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Keys(#[from] KeysFileError),
    #[error("connecting to MongoDB: {0}")]
    Store(#[from] StoreError),
    #[error("creating the Kafka producer: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error(transparent)]
    Search(#[from] SearchAccessError),
    #[error("binding {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("serving HTTP: {0}")]
    Serve(std::io::Error),
    #[error("{0}")]
    TenantLimits(String),
}

/// Longest wait on shutdown for the writes under way to finish.
const FINISH_WRITES: Duration = Duration::from_secs(10);

/// Every minute, the rate state of tenants back at their full allowance is dropped.
async fn forget_idle_tenants(state: Arc<AppState>, shutdown: CancellationToken) {
    let mut every = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = every.tick() => state.fairness.forget_idle(),
            () = shutdown.cancelled() => return,
        }
    }
}

/// Runs until `shutdown` fires.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), RunError> {
    let auth = authenticator(&config)?;
    let fairness = config.tenants.fairness().map_err(RunError::TenantLimits)?;
    let metrics = Arc::new(Metrics::new());
    let Some(store) = open_store(&config, &metrics, &shutdown).await? else {
        return Ok(());
    };
    let outbox = Outbox::new(config.relay.relay_max_pending, config.relay.overlap());
    // Fails early on bad Kafka settings; a down broker is fine (the relay waits for it).
    drop(crate::relay::producer(
        &config.kafka,
        &config.relay,
        &crate::relay::refusals(&config.kafka, &metrics),
    )?);
    let pod = config.relay.pod();
    let relay = Relay {
        outbox: Arc::clone(&outbox),
        store: store.clone(),
        kafka: config.kafka.clone(),
        args: config.relay.clone(),
        metrics: Arc::clone(&metrics),
        id: format!("{pod}/{}", uuid::Uuid::new_v4()),
        pod,
    };
    let state = Arc::new(AppState {
        messages: Messages::new(
            store.clone(),
            store.group_commit(
                config.insert_batch_max.get(),
                config.insert_batches_in_flight.get(),
                metrics.insert_batch.clone(),
            ),
            Arc::clone(&outbox),
        ),
        auth,
        search: SearchClient::new(&config.search)?,
        limits: config.limits.limits(),
        max_body_bytes: config.limits.max_body_bytes,
        metrics,
        fairness,
        health: crate::health::Health::default(),
    });
    tokio::spawn(forget_idle_tenants(Arc::clone(&state), shutdown.clone()));
    // The first answer before serving, then one a second.
    state.health.probe(&store, &state.metrics).await;
    let probe = {
        let (state, store, stop) = (Arc::clone(&state), store.clone(), shutdown.clone());
        tokio::spawn(async move { state.health.run(store, &state.metrics, stop).await })
    };

    let relay_stop = CancellationToken::new();
    let relay_task = tokio::spawn(relay.run(relay_stop.clone()));
    // Serve (and report ready on the Lease) once the relay has registered this process; without
    // it writes are refused anyway, and `/ready` says so if it takes longer.
    if tokio::time::timeout(Duration::from_secs(10), outbox.vouched.notified())
        .await
        .is_err()
    {
        tracing::warn!(
            "the relay has not registered this process after 10 s; serving, writes wait for it"
        );
    }
    let beside = beside_the_api(&config, &state, &shutdown).await?;
    let served = serve(config.http_addr, Arc::clone(&state), &shutdown).await;
    // Requests are done; the writes they started may not be (a client that hung up does not
    // wait for its write). Once they are, every change is in the outbox, or in doubt there.
    if !state.messages.finish_writes(FINISH_WRITES).await {
        tracing::warn!(
            "writes still under way after {FINISH_WRITES:?}: the relay's registration keeps them owed"
        );
    }
    relay_stop.cancel();
    for task in beside {
        let _ = task.await;
    }
    let _ = probe.await;
    match relay_task.await {
        Ok(Err(error)) => tracing::error!(%error, "relay stopped with an error"),
        Err(error) => tracing::error!(%error, "relay task failed"),
        Ok(Ok(())) => {}
    }
    served
}

/// What runs beside the API until `shutdown`: the worker Lease, the tombstone purge, and
/// `/metrics` on its own port.
async fn beside_the_api(
    config: &Config,
    state: &Arc<AppState>,
    shutdown: &CancellationToken,
) -> Result<Vec<tokio::task::JoinHandle<()>>, RunError> {
    let lease = tokio::spawn(hold_lease(Arc::clone(state), shutdown.clone()));
    let purge = tokio::spawn(purge_loop(
        Arc::clone(state),
        config.tombstone_horizon_days,
        (
            Duration::from_secs(config.purge_interval_seconds.max(1)),
            Duration::from_secs(config.purge_index_grace_seconds),
        ),
        shutdown.clone(),
    ));
    let listener = bind(config.metrics_addr).await?;
    let router = crate::routes::metrics_router(Arc::clone(state));
    let stop = shutdown.clone();
    let scraped = tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, router)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await
        {
            tracing::error!(%error, "serving /metrics");
        }
    });
    Ok(vec![lease, purge, scraped])
}

/// API keys from their file, unless authentication is turned off for a local demo (loudly).
fn authenticator(config: &Config) -> Result<Authenticator, RunError> {
    Ok(match &config.auth.api_keys_file {
        Some(path) if !config.auth.insecure_tenant_header => {
            let keys = KeyStore::load(path)?;
            tracing::info!(keys = keys.len(), "API keys loaded");
            Authenticator::Keys(keys)
        }
        _ => {
            tracing::warn!(
                "AUTHENTICATION IS OFF (--insecure-tenant-header): the tenant is whatever X-Tenant-Id says; \
                 anyone who reaches this port can read and change every tenant's messages. Local demos only."
            );
            Authenticator::InsecureTenantHeader
        }
    })
}

/// Serves the API on `addr` until `shutdown`, letting requests under way finish.
async fn serve(
    addr: SocketAddr,
    state: Arc<AppState>,
    shutdown: &CancellationToken,
) -> Result<(), RunError> {
    let listener = bind(addr).await?;
    let local = listener.local_addr().map_err(RunError::Serve)?;
    tracing::info!(addr = %local, "api-server listening");
    // Responses go out whole in one write; never hold them back for Nagle.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%error, "TCP_NODELAY not set");
        }
    });
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown.clone().cancelled_owned())
        .await
        .map_err(RunError::Serve)
}

async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, RunError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| RunError::Bind { addr, source })
}

/// Every `every`, a purge of the tombstones past the horizon (see `Messages::purge`).
async fn purge_loop(
    state: Arc<AppState>,
    horizon_days: u32,
    (every, index_grace): (Duration, Duration),
    shutdown: CancellationToken,
) {
    let horizon = chrono::Duration::days(i64::from(horizon_days));
    if state.search.is_none() {
        tracing::warn!(
            "no search engine configured: tombstones are kept (the api-server purges one only once the index no longer holds it)"
        );
    }
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        let before = Timestamp::from(Timestamp::now().as_datetime() - horizon);
        match state
            .messages
            .purge(before, state.search.as_ref(), index_grace)
            .await
        {
            Ok(p) if p.purged == 0 && p.kept == 0 => {}
            Ok(p) => {
                state.metrics.tombstones_purged.inc_by(p.purged);
                state.metrics.tombstones_kept.inc_by(p.kept);
                tracing::info!(purged = p.purged, kept = p.kept, %before, "tombstones purged (kept: the index still holds them)");
            }
            Err(error) => tracing::warn!(%error, "tombstone purge failed; will retry"),
        }
    }
}

/// How often a start MongoDB refused tries again.
const REFUSED_RETRY: Duration = Duration::from_secs(10);

/// Connects to MongoDB and creates the indexes. While MongoDB refuses the credentials, the CA or
/// the permissions, the refusal is logged once, a Lease says so (not ready: nothing is served
/// yet), and the start is tried again every [`REFUSED_RETRY`]; `None` when `shutdown` fires
/// meanwhile. Any other failure ends the start.
async fn open_store(
    config: &Config,
    metrics: &Arc<Metrics>,
    shutdown: &CancellationToken,
) -> Result<Option<Store>, RunError> {
    let m = &config.mongodb;
    let endpoint = m.endpoint();
    let attempt = || Store::open(m);
    let mut lease: Option<(CancellationToken, tokio::task::JoinHandle<()>)> = None;
    let result = loop {
        let error = match attempt().await {
            Ok(store) => break Ok(Some(store)),
            Err(error) => error,
        };
        let Some(refused) = error.refusal(&endpoint) else {
            break Err(error.into());
        };
        metrics.refusals.record(refused);
        if lease.is_none() {
            let stop = shutdown.child_token();
            let task = tokio::spawn(refused_lease(Arc::clone(metrics), stop.clone()));
            lease = Some((stop, task));
        }
        tokio::select! {
            () = shutdown.cancelled() => break Ok(None),
            () = tokio::time::sleep(REFUSED_RETRY) => {}
        }
    };
    if let Some((stop, task)) = lease {
        stop.cancel();
        let _ = task.await;
    }
    result
}

/// The Lease of a start MongoDB refuses: not ready, the refusal.
async fn refused_lease(metrics: Arc<Metrics>, stop: CancellationToken) {
    use pipeline_contract::lease::{WorkerState, maintain};
    use pipeline_contract::worker::Role;
    maintain(
        Role::Api,
        Duration::from_secs(1),
        move || {
            let refused = metrics.refusals.current();
            async move {
                WorkerState {
                    refused,
                    ..WorkerState::default()
                }
            }
        },
        stop,
    )
    .await;
}

/// The api-server's worker Lease (ready = MongoDB answers and writes are taken; the relay's
/// backlog), through `pipeline_contract::lease::maintain`.
async fn hold_lease(state: Arc<AppState>, shutdown: CancellationToken) {
    use pipeline_contract::lease::{WorkerState, maintain};
    use pipeline_contract::worker::Role;
    use pipeline_contract::worker::lease::RelayBacklog;
    maintain(
        Role::Api,
        Duration::from_secs(5),
        move || {
            let state = state.clone();
            async move {
                let lag_ms = (state.metrics.relay_lag_seconds.get() * 1000.0) as i64;
                WorkerState {
                    ready: state.health.mongodb_answers() && state.messages.accepts_writes(),
                    breaker: None,
                    relay_backlog: Some(RelayBacklog::of_age_millis(lag_ms)),
                    refused: state.metrics.refusals.current(),
                    rebuild: None,
                }
            }
        },
        shutdown,
    )
    .await;
}

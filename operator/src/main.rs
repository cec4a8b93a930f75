use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use clap::Parser;
use operator::controller::{self, Context};
use operator::leader::Election;
use operator::metrics::Metrics;
use operator::server::{self, Health};
use pipeline_contract::process;
use tokio_util::sync::CancellationToken;

/// Reconciles MessagePipeline resources into running pipelines.
#[derive(Debug, Parser)]
#[command(name = "operator")]
struct Cli {
    /// Watch only this namespace (default: every namespace).
    #[arg(long, env = "WATCH_NAMESPACE")]
    namespace: Option<String>,
    /// This replica's identity in leader election (the downward API's pod name).
    #[arg(long, env = "POD_NAME", default_value = "operator-local")]
    pod_name: String,
    /// Namespace of the leader Lease (the downward API's pod namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pod_namespace: String,
    /// Name of the leader Lease.
    #[arg(
        long,
        env = "OPERATOR_LEASE_NAME",
        default_value = "message-pipeline-operator"
    )]
    lease_name: String,
    /// Address of `/live`, `/ready` and `/metrics`.
    #[arg(long, env = "OPERATOR_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    http_addr: SocketAddr,
}

#[tokio::main]
async fn main() -> ExitCode {
    process::init_logging();
    let cli = Cli::parse();
    let client = match kube::Client::try_default().await {
        Ok(c) => c,
        Err(error) => {
            eprintln!("operator: connecting to the Kubernetes API: {error}");
            return ExitCode::FAILURE;
        }
    };
    let shutdown = CancellationToken::new();
    tokio::spawn(process::stop_on_signal(
        shutdown.clone(),
        "finishing reconciles in flight",
    ));
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::default());
    let server = tokio::spawn(server::serve(
        cli.http_addr,
        health.clone(),
        metrics.clone(),
        shutdown.clone(),
    ));

    let election = Election {
        namespace: cli.pod_namespace.clone(),
        name: cli.lease_name.clone(),
        identity: cli.pod_name.clone(),
        duration: Duration::from_secs(15),
        renew: Duration::from_secs(5),
    };
    // A waiting candidate is healthy: ready means "serving its role".
    health.ready.store(true, Ordering::Relaxed);
    tracing::info!(lease = %cli.lease_name, identity = %cli.pod_name, "waiting to lead");
    if !election.acquire(&client, &shutdown).await {
        return ExitCode::SUCCESS;
    }
    tracing::info!("leading: reconciling MessagePipelines");
    metrics.leader.set(1);
    let lost = CancellationToken::new();
    let stop = CancellationToken::new();
    let holder = {
        let (election, client, shutdown, lost, stop) = (
            election.clone(),
            client.clone(),
            shutdown.clone(),
            lost.clone(),
            stop.clone(),
        );
        tokio::spawn(async move {
            election.hold(&client, &shutdown, &lost).await;
            stop.cancel();
        })
    };
    let ctx = Arc::new(Context::new(client, metrics.clone(), Some(cli.pod_name)));
    // An empty WATCH_NAMESPACE means every namespace, like an absent one.
    let namespace = cli.namespace.filter(|n| !n.is_empty());
    let controller = tokio::spawn(controller::run(ctx, namespace, stop.clone()));
    tokio::select! {
        () = shutdown.cancelled() => {}
        () = lost.cancelled() => {}
    }
    stop.cancel();
    let _ = controller.await;
    let _ = holder.await;
    shutdown.cancel();
    let _ = server.await;
    metrics.leader.set(0);
    if lost.is_cancelled() {
        tracing::error!(
            "lost leadership; exiting so the Deployment restarts this replica as a candidate"
        );
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

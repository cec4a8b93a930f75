use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use clap::Parser;
use operator::controller::{self, Context};
use operator::leader::Election;
use operator::metrics::Metrics;
use operator::server::{self, Health};
use pipeline_contract::{process, telemetry};
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
    /// Reconciles running at once. Each holds Kafka and HTTP clients while it runs, so this
    /// bounds the operator's memory whatever the number of pipelines.
    #[arg(long, env = "OPERATOR_CONCURRENCY", default_value_t = controller::CONCURRENCY, value_parser = clap::value_parser!(u16).range(1..))]
    concurrency: u16,
}

#[tokio::main]
async fn main() -> ExitCode {
    let _telemetry = telemetry::init("operator");
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
    };
    let candidate = match election.candidate(client.clone()).await {
        Ok(c) => c,
        Err(error) => {
            eprintln!(
                "operator: preparing the leader Lease {}: {error}",
                cli.lease_name
            );
            return ExitCode::FAILURE;
        }
    };
    // A waiting candidate is healthy: ready means "serving its role".
    health.ready.store(true, Ordering::Relaxed);
    tracing::info!(lease = %cli.lease_name, identity = %cli.pod_name, "waiting to lead");
    if !candidate.acquire(&shutdown).await {
        return ExitCode::SUCCESS;
    }
    tracing::info!("leading: reconciling MessagePipelines");
    metrics.leader.set(1);
    let ctx = Arc::new(
        Context::new(client, metrics.clone(), Some(cli.pod_name)).with_concurrency(cli.concurrency),
    );
    // An empty WATCH_NAMESPACE means every namespace, like an absent one.
    let namespace = cli.namespace.filter(|n| !n.is_empty());
    let stop = CancellationToken::new();
    let controller = tokio::spawn(controller::run(ctx, namespace, stop.clone()));
    let controller = async {
        let _ = controller.await;
    };
    let lost = candidate.lead(controller, &stop, &shutdown).await;
    metrics.leader.set(0);
    shutdown.cancel();
    let _ = server.await;
    if let Some(lost) = lost {
        tracing::error!(
            %lost,
            "stepped down; exiting so the Deployment restarts this replica as a candidate"
        );
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use indexer::config::{Cli, Command};
use indexer::metrics::Metrics;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => {
            let shutdown = CancellationToken::new();
            tokio::spawn(stop_on_signal(shutdown.clone()));
            match indexer::run::run(args, Arc::new(Metrics::new()), shutdown).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    tracing::error!(%error, "indexer stopped");
                    eprintln!("indexer: {error}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Dlq(args) => match indexer::dlq_tools::run(&args).await {
            Ok(code) => ExitCode::from(code),
            Err(error) => {
                eprintln!("indexer dlq: {error}");
                ExitCode::FAILURE
            }
        },
    }
}

/// One watcher for SIGTERM and Ctrl-C that fans out through the token.
async fn stop_on_signal(shutdown: CancellationToken) {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutting down: stop polling, flush, commit");
    shutdown.cancel();
}

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use indexer::config::{Cli, Command};
use indexer::metrics::Metrics;
use pipeline_contract::{process, telemetry};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> ExitCode {
    let _telemetry = telemetry::init("indexer");
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => {
            let shutdown = CancellationToken::new();
            tokio::spawn(process::stop_on_signal(
                shutdown.clone(),
                "stop polling, flush, commit",
            ));
            match indexer::run::run(args, Arc::new(Metrics::new()), shutdown).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    tracing::error!(%error, "indexer stopped");
                    eprintln!("indexer: {error}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Audit(args) => match indexer::audit_tool::run(&args).await {
            Ok(code) => ExitCode::from(code),
            Err(error) => {
                eprintln!("indexer audit: {error}");
                ExitCode::FAILURE
            }
        },
        Command::Rebuild(args) => match indexer::rebuild::run(&args).await {
            Ok(code) => ExitCode::from(code),
            Err(error) => {
                eprintln!("indexer rebuild: {error}");
                ExitCode::FAILURE
            }
        },
        Command::Dlq(args) => match indexer::dlq_tools::run(&args).await {
            Ok(code) => ExitCode::from(code),
            Err(error) => {
                eprintln!("indexer dlq: {error}");
                ExitCode::FAILURE
            }
        },
    }
}

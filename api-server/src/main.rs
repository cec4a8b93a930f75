use std::process::ExitCode;

use api_server::config::Config;
use clap::Parser;
use pipeline_contract::{process, telemetry};
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    let _telemetry = telemetry::init("api-server");
    let config = Config::parse();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    if config.worker_threads > 0 {
        runtime.worker_threads(config.worker_threads);
    }
    let runtime = match runtime.build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("api-server: starting the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(process::stop_on_signal(
            shutdown.clone(),
            "finishing requests, then draining the relay",
        ));
        match api_server::app::run(config, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                tracing::error!(%error, "api-server stopped");
                eprintln!("api-server: {error}");
                ExitCode::FAILURE
            }
        }
    })
}

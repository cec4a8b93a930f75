//! What every binary of the pipeline does the same way as a process (feature `process`): one
//! watcher for SIGTERM and Ctrl-C that fans out through a cancellation token. Logging and
//! tracing are in [`crate::telemetry`].

use tokio_util::sync::CancellationToken;

/// The env var of the log filter (read by [`crate::telemetry::init`], not by the command line).
pub const LOG_FILTER_ENV: &str = "RUST_LOG";
/// Cancels `shutdown` at the first SIGTERM or Ctrl-C, logging `what` (what stopping means for
/// this binary). Spawn it once, at start.
pub async fn stop_on_signal(shutdown: CancellationToken, what: &'static str) {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutting down: {what}");
    shutdown.cancel();
}

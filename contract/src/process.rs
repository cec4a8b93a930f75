//! What every binary of the pipeline does the same way as a process (feature `process`): logs
//! as JSON lines on stderr, filtered by `RUST_LOG` (default `info`), and one watcher for SIGTERM
//! and Ctrl-C that fans out through a cancellation token.

use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// The env var of the log filter (read by [`init_logging`], not by the command line).
pub const LOG_FILTER_ENV: &str = "RUST_LOG";

/// JSON log lines, with the current span's fields, filtered by [`LOG_FILTER_ENV`] (default
/// `info`).
pub fn init_logging() {
    tracing_subscriber::fmt()
        .json()
        .with_current_span(true)
        .with_env_filter(
            EnvFilter::try_from_env(LOG_FILTER_ENV).unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
}

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

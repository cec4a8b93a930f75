//! `/live`, `/ready` and `/metrics`, on the same small axum router the workers use.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// What the health endpoints report.
#[derive(Debug, Default)]
pub struct Health {
    /// The controller runs (this replica leads) or waits as a healthy candidate.
    pub ready: AtomicBool,
}

#[derive(Debug, Clone)]
struct Shared {
    health: Arc<Health>,
    metrics: Arc<Metrics>,
}

pub fn router(health: Arc<Health>, metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/live", get(|| async { "ok" }))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics_text))
        .with_state(Shared { health, metrics })
}

async fn ready(State(s): State<Shared>) -> impl IntoResponse {
    if s.health.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

async fn metrics_text(State(s): State<Shared>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(),
    )
}

/// Serves until `shutdown`.
pub async fn serve(
    addr: SocketAddr,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "health and metrics listening");
    axum::serve(listener, router(health, metrics))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn routes() {
        let (health, metrics) = (Arc::new(Health::default()), Arc::new(Metrics::new()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let app = router(health.clone(), metrics);
        tokio::spawn(async move { axum::serve(listener, app).await });
        let get = |path: &'static str| {
            let url = format!("{base}{path}");
            async move {
                let response = reqwest::get(url).await.unwrap();
                (response.status().as_u16(), response.text().await.unwrap())
            }
        };
        assert_eq!(get("/live").await, (200, "ok".into()));
        assert_eq!(get("/ready").await.0, 503);
        health.ready.store(true, Ordering::Relaxed);
        assert_eq!(get("/ready").await.0, 200);
        assert!(
            get("/metrics")
                .await
                .1
                .contains("operator_reconciles_total")
        );
        assert_eq!(get("/x").await.0, 404);
    }
}

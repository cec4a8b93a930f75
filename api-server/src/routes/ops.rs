//! `/live`, `/ready`, `/metrics` and `/openapi.json`: unauthenticated, for probes, scrapers
//! and tooling (`/metrics` on its own port: its samples name tenants).

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::SharedState;

/// The process is running.
pub async fn live() -> &'static str {
    "ok"
}

/// MongoDB answers (as the health probe last found: a flood of calls costs MongoDB nothing) and
/// the relay has registered this process (writes are taken). Kafka is deliberately not part of
/// it: a Kafka outage must not stop the API (the relay catches up), or every pod would turn
/// unready at once.
pub async fn ready(State(state): State<SharedState>) -> Response {
    if !state.health.mongodb_answers() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: MongoDB does not answer",
        )
            .into_response()
    } else if !state.messages.accepts_writes() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the relay has not registered this api-server recently",
        )
            .into_response()
    } else {
        (StatusCode::OK, "ready").into_response()
    }
}

pub async fn metrics(State(state): State<SharedState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}

/// The OpenAPI document for this server's limits (see `crate::openapi`).
pub async fn openapi(State(state): State<SharedState>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_vec_pretty(&crate::openapi::document(&state.limits)).unwrap_or_default(),
    )
        .into_response()
}

//! `/live`, `/ready`, `/metrics` and `/openapi.json`: unauthenticated, for probes, scrapers
//! and tooling.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::SharedState;

/// The process is running.
pub async fn live() -> &'static str {
    "ok"
}

/// MongoDB answers and the relay has registered this process (writes are taken). Kafka is
/// deliberately not part of it: a Kafka outage must not stop the API (the relay catches up), or
/// every pod would turn unready at once.
pub async fn ready(State(state): State<SharedState>) -> Response {
    match state.messages.store().ping().await {
        Ok(()) if !state.messages.accepts_writes() => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the relay has not registered this api-server recently",
        )
            .into_response(),
        Ok(()) => (StatusCode::OK, "ready").into_response(),
        Err(error) => {
            tracing::warn!(%error, "not ready: MongoDB does not answer");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: MongoDB does not answer",
            )
                .into_response()
        }
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

pub async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        ApiDoc::openapi().to_pretty_json().unwrap_or_default(),
    )
        .into_response()
}

#[derive(Debug)]
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An API key from the keys file; it alone decides the tenant",
                    ))
                    .build(),
            ),
        );
    }
}

/// The OpenAPI document, generated from the handlers' annotations and the types they use.
#[derive(OpenApi)]
#[openapi(
    info(title = "message-pipeline api-server", description = "Messages per tenant on MongoDB, relayed to Kafka, searchable. Every error is application/problem+json (RFC 9457)."),
    paths(
        super::messages::create,
        super::messages::get,
        super::messages::update,
        super::messages::delete,
        super::messages::conversation,
        super::search::search,
    ),
    components(schemas(
        crate::store::Message,
        super::messages::MessagePage,
        super::messages::CreateMessageBody,
        super::messages::PatchMessageBody,
        crate::problem::Problem,
        crate::problem::FieldError,
    )),
    modifiers(&BearerAuth),
)]
#[derive(Debug)]
pub struct ApiDoc;

//! The HTTP surface: the router, the state handlers share, and the request plumbing every route
//! goes through (correlation id, tracing span, metrics, authentication, body reading).
//!
//! Handlers live in `messages`, `search` and `ops`; they parse with the pure modules
//! (`validate`, `etag`, `idempotency`, `search`), call the service, and render. Every error leaves
//! as `application/problem+json`, including the ones axum would answer in plain text (unknown
//! route, wrong method, oversized or non-JSON body, bad query string).

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, FromRequestParts, MatchedPath, Request, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use pipeline_contract::telemetry;
use tracing::Instrument;

use crate::auth::{KeyStore, Principal};
use crate::fairness::Fairness;
use crate::metrics::{Metrics, RequestLabels, RouteLabels, ThrottleLabels};
use crate::problem::Problem;
use crate::search::SearchClient;
use crate::service::Messages;
use crate::validate::Limits;

pub mod messages;
pub mod ops;
pub mod search;

/// `X-Correlation-Id`: taken from the request when valid, generated otherwise, echoed on the
/// response, put on every log line of the request and on the Kafka record of its change.
pub static CORRELATION_ID: HeaderName = HeaderName::from_static("x-correlation-id");
/// The demo-only tenant header (`--insecure-tenant-header`).
pub static TENANT_HEADER: HeaderName = HeaderName::from_static("x-tenant-id");

/// How requests are authenticated.
#[derive(Debug)]
pub enum Authenticator {
    /// Bearer API keys (the default, and the only mode for anything but a local demo).
    Keys(KeyStore),
    /// The tenant is whatever `X-Tenant-Id` says: no authentication at all.
    InsecureTenantHeader,
}

/// What every handler can reach.
#[derive(Debug)]
pub struct AppState {
    pub messages: Messages,
    pub auth: Authenticator,
    pub search: Option<SearchClient>,
    pub limits: Limits,
    pub max_body_bytes: usize,
    pub metrics: Arc<Metrics>,
    pub fairness: Fairness,
    pub health: crate::health::Health,
}

pub type SharedState = Arc<AppState>;

/// The whole application.
pub fn router(state: SharedState) -> Router {
    let v1 = Router::new()
        .route("/v1/messages", post(messages::create))
        .route(
            "/v1/messages/{id}",
            get(messages::get)
                .patch(messages::update)
                .delete(messages::delete),
        )
        .route(
            "/v1/conversations/{conversationId}/messages",
            get(messages::conversation),
        )
        .route("/v1/search", get(search::search))
        .route_layer(middleware::from_fn_with_state(state.clone(), admit));
    let api = Router::new()
        .merge(v1)
        .route("/live", get(ops::live))
        .route("/ready", get(ops::ready))
        .route("/openapi.json", get(ops::openapi))
        .route_layer(middleware::from_fn_with_state(state.clone(), observe));
    api.fallback(|| async { Problem::not_found("no such route") })
        .method_not_allowed_fallback(|| async {
            let mut p = Problem::not_found("this route does not take that method");
            p.status = 405;
            p.title = "Method Not Allowed".into();
            p
        })
        .with_state(state)
}

/// `/metrics` (and `/live`), served on a port of their own ([`crate::config::Config::metrics_addr`]).
pub fn metrics_router(state: SharedState) -> Router {
    Router::new()
        .route("/metrics", get(ops::metrics))
        .route("/live", get(ops::live))
        .fallback(|| async { Problem::not_found("no such route") })
        .with_state(state)
}

/// The request's correlation id (an extension set by [`observe`]).
#[derive(Debug, Clone)]
pub struct CorrelationId(pub String);

fn valid_correlation_id(value: &HeaderValue) -> Option<String> {
    let bytes = value.as_bytes();
    let ok = (1..=128).contains(&bytes.len()) && bytes.iter().all(|b| b.is_ascii_graphic());
    ok.then(|| String::from_utf8_lossy(bytes).into_owned())
}

/// Correlation id, tracing span, access log and request metrics around every routed request.
async fn observe(State(state): State<SharedState>, mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    let correlation_id = request
        .headers()
        .get(&CORRELATION_ID)
        .and_then(valid_correlation_id)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().as_str().to_owned();
    request
        .extensions_mut()
        .insert(CorrelationId(correlation_id.clone()));
    let span = tracing::info_span!(
        "request",
        otel.name = format!("{method} {route}"),
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        correlation_id = %correlation_id,
        %method,
        %route,
        http.request.method = %method,
        http.route = %route,
        http.response.status_code = tracing::field::Empty,
        tenant = tracing::field::Empty,
    );
    telemetry::set_parent(
        &span,
        request
            .headers()
            .get(telemetry::TRACEPARENT)
            .and_then(|v| v.to_str().ok()),
    );
    let mut response = next.run(request).instrument(span.clone()).await;
    let status = response.status().as_u16();
    span.record("http.response.status_code", status);
    if status >= 500 {
        span.record("otel.status_code", "ERROR");
    }
    let elapsed = started.elapsed();
    span.in_scope(|| {
        let ms = elapsed.as_secs_f64() * 1000.0;
        match status {
            500.. => tracing::error!(status, ms, "request failed"),
            400.. => tracing::info!(status, ms, "request refused"),
            _ => tracing::debug!(status, ms, "request done"),
        }
    });
    if let Ok(value) = HeaderValue::from_str(&correlation_id) {
        response.headers_mut().insert(CORRELATION_ID.clone(), value);
    }
    state
        .metrics
        .requests
        .get_or_create(&RequestLabels {
            method: method.clone(),
            route: route.clone(),
            status,
        })
        .inc();
    state
        .metrics
        .request_seconds
        .get_or_create(&RouteLabels { method, route })
        .observe(elapsed.as_secs_f64());
    response
}

/// Per-tenant fairness in front of every `/v1` handler: the caller is authenticated here, and a
/// tenant over its rate or concurrency is answered 429 before anything else happens. A request
/// that does not authenticate goes on, to be refused by its handler's [`Principal`] extractor
/// with the reason.
async fn admit(State(state): State<SharedState>, request: Request, next: Next) -> Response {
    let (mut parts, body) = request.into_parts();
    let Ok(principal) = Principal::of(&parts, &state) else {
        return next.run(Request::from_parts(parts, body)).await;
    };
    tracing::Span::current().record("tenant", principal.tenant.as_str());
    match state.fairness.admit(&principal.tenant) {
        Ok(permit) => {
            parts.extensions.insert(principal);
            let response = next.run(Request::from_parts(parts, body)).await;
            drop(permit);
            response
        }
        Err(refusal) => {
            state
                .metrics
                .tenant_throttled
                .get_or_create(&ThrottleLabels {
                    tenant: principal.tenant.clone(),
                    limit: refusal.label().to_owned(),
                })
                .inc();
            Problem::too_many_requests(&principal.tenant, refusal).into_response()
        }
    }
}

impl FromRequestParts<SharedState> for CorrelationId {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _: &SharedState) -> Result<Self, Problem> {
        Ok(parts
            .extensions
            .get::<CorrelationId>()
            .cloned()
            .unwrap_or_else(|| CorrelationId(uuid::Uuid::new_v4().to_string())))
    }
}

/// The authenticated caller: the tenant comes from the key and nothing else.
impl FromRequestParts<SharedState> for Principal {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &SharedState) -> Result<Self, Problem> {
        // Authenticated by `admit` already (every `/v1` route).
        if let Some(principal) = parts.extensions.get::<Principal>() {
            return Ok(principal.clone());
        }
        let principal = Self::of(parts, state)?;
        tracing::Span::current().record("tenant", principal.tenant.as_str());
        Ok(principal)
    }
}

impl Principal {
    fn of(parts: &Parts, state: &SharedState) -> Result<Self, Problem> {
        match &state.auth {
            Authenticator::Keys(keys) => keys
                .authenticate_header(parts.headers.get(AUTHORIZATION))
                .map_err(Problem::from),
            Authenticator::InsecureTenantHeader => {
                let tenant = parts
                    .headers
                    .get(&TENANT_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .map(str::trim)
                    .filter(|t| !t.is_empty() && t.len() <= 128)
                    .ok_or_else(|| {
                        Problem::invalid_header(
                            &TENANT_HEADER,
                            "this server runs with --insecure-tenant-header: send the tenant in X-Tenant-Id",
                        )
                    })?;
                Ok(Principal {
                    name: "insecure-tenant-header".into(),
                    tenant: tenant.to_owned(),
                })
            }
        }
    }
}

/// A JSON request body: `Content-Type: application/json` (415 otherwise), at most the configured
/// size (413 otherwise). Parsing is the handler's (400/422 from `validate`).
#[derive(Debug)]
pub struct JsonBody(pub Bytes);

impl FromRequest<SharedState> for JsonBody {
    type Rejection = Problem;

    async fn from_request(request: Request<Body>, state: &SharedState) -> Result<Self, Problem> {
        let json = request
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|essence| {
                let essence = essence.trim();
                essence.eq_ignore_ascii_case("application/json")
                    || (essence.len() > 5
                        && essence[..essence.len() - 5].contains('/')
                        && essence.to_ascii_lowercase().ends_with("+json"))
            });
        if !json {
            return Err(Problem::unsupported_media_type());
        }
        let limit = state.max_body_bytes;
        let bytes = axum::body::to_bytes(request.into_body(), limit)
            .await
            .map_err(|_| Problem::content_too_large(limit))?;
        Ok(Self(bytes))
    }
}

/// Renders a body as JSON with the given status and extra headers.
pub fn json_response<T: serde::Serialize>(
    status: axum::http::StatusCode,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: &T,
) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => {
            let mut response = (status, bytes).into_response();
            let h = response.headers_mut();
            h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            for (name, value) in headers {
                h.insert(name, value);
            }
            response
        }
        Err(error) => {
            tracing::error!(%error, "serializing a response failed");
            Problem::internal().into_response()
        }
    }
}

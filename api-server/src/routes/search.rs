//! `GET /v1/search`.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;

use super::messages::MessagePage;
use super::{SharedState, json_response};
use crate::auth::Principal;
use crate::problem::Problem;
use crate::search::{SearchParams, SearchQuery};

/// Full-text search of the caller's messages. Lags writes by the pipeline's freshness.
#[utoipa::path(get, path = "/v1/search", tag = "search",
    params(SearchParams),
    responses(
        (status = 200, body = MessagePage),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The search engine is unreachable or the index is not installed", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn search(
    principal: Principal,
    State(state): State<SharedState>,
    params: Result<Query<SearchParams>, QueryRejection>,
) -> Result<Response, Problem> {
    let Query(params) = params.map_err(|r| Problem::invalid_parameter("query", r.body_text()))?;
    let query = SearchQuery::from_params(params)?;
    let client = state
        .search
        .as_ref()
        .ok_or_else(|| Problem::unavailable("search is not configured on this server"))?;
    let hits = client.search(&principal.tenant, &query).await?;
    let body = MessagePage {
        items: hits.items,
        next_cursor: hits.next_cursor,
    };
    Ok(json_response(StatusCode::OK, vec![], &body))
}

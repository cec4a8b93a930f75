//! `/v1/messages` and `/v1/conversations/{conversationId}/messages`.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::header::{ETAG, LOCATION};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{CorrelationId, JsonBody, SharedState, json_response};
use crate::auth::Principal;
use crate::cursor;
use crate::etag::{IfMatch, etag};
use crate::idempotency::{self, IdempotencyKey};
use crate::problem::Problem;
use crate::search::limit_param;
use crate::service::Created;
use crate::store::Message;
use crate::validate::{UUID_RULE, parse_create, parse_patch, parse_uuid};

/// Set on a create answered from an earlier request with the same `Idempotency-Key`.
pub static IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// A page of messages.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MessagePage {
    pub items: Vec<Message>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// Pagination parameters of a conversation listing.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// 1..=100, default 20.
    pub limit: Option<usize>,
    /// `nextCursor` of the previous page.
    pub cursor: Option<String>,
}

fn path_uuid(name: &str, value: &str) -> Result<Uuid, Problem> {
    parse_uuid(value).ok_or_else(|| Problem::invalid_parameter(name, UUID_RULE))
}

fn message_response(
    status: StatusCode,
    message: &Message,
    extra: Vec<(HeaderName, HeaderValue)>,
) -> Response {
    let mut headers = vec![(ETAG, etag(message.version))];
    headers.extend(extra);
    json_response(status, headers, message)
}

/// Create a message.
///
/// The body schema and the error statuses are `crate::openapi`'s.
#[utoipa::path(post, path = "/v1/messages", tag = "messages",
    params(("Idempotency-Key" = Option<String>, Header, description = "1..=255 visible ASCII characters. A retry with the same key and body returns the original message; the same key with another body is a 422")),
    responses(
        (status = 201, description = "Created (or replayed: header Idempotent-Replayed)", body = Message, headers(
            ("ETag" = String, description = "The quoted version"),
            ("Location" = String, description = "/v1/messages/{id}"),
            ("Idempotent-Replayed" = String, description = "`true` when answered from an earlier request with the same Idempotency-Key"),
        )),
    ),
    security(("bearer" = [])))]
pub async fn create(
    principal: Principal,
    State(state): State<SharedState>,
    CorrelationId(correlation_id): CorrelationId,
    headers: HeaderMap,
    JsonBody(body): JsonBody,
) -> Result<Response, Problem> {
    let key = headers
        .get(&idempotency::HEADER)
        .map(|v| IdempotencyKey::parse(v.as_bytes()))
        .transpose()?;
    let new = parse_create(&body, &state.limits)?;
    let (message, how) = state
        .messages
        .create(&principal.tenant, new, key.as_ref(), &correlation_id)
        .await?;
    let mut extra = vec![];
    if let Ok(location) = HeaderValue::from_str(&format!("/v1/messages/{}", message.id)) {
        extra.push((LOCATION, location));
    }
    if how == Created::Replayed {
        extra.push((
            IDEMPOTENT_REPLAYED.clone(),
            HeaderValue::from_static("true"),
        ));
    }
    Ok(message_response(StatusCode::CREATED, &message, extra))
}

/// Read a message.
#[utoipa::path(get, path = "/v1/messages/{id}", tag = "messages",
    params(("id" = Uuid, Path)),
    responses(
        (status = 200, body = Message, headers(("ETag" = String, description = "The quoted version"))),
    ),
    security(("bearer" = [])))]
pub async fn get(
    principal: Principal,
    State(state): State<SharedState>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let id = path_uuid("id", &id)?;
    let message = state.messages.get(&principal.tenant, id).await?;
    Ok(message_response(StatusCode::OK, &message, vec![]))
}

/// Change a message's content and/or metadata.
#[utoipa::path(patch, path = "/v1/messages/{id}", tag = "messages",
    params(("id" = Uuid, Path), ("If-Match" = Option<String>, Header, description = "The ETag read; 412 if the message changed since")),
    responses(
        (status = 200, body = Message, headers(("ETag" = String, description = "The quoted version"))),
    ),
    security(("bearer" = [])))]
pub async fn update(
    principal: Principal,
    State(state): State<SharedState>,
    CorrelationId(correlation_id): CorrelationId,
    Path(id): Path<String>,
    headers: HeaderMap,
    JsonBody(body): JsonBody,
) -> Result<Response, Problem> {
    let id = path_uuid("id", &id)?;
    let if_match = IfMatch::from_headers(&headers)?;
    let patch = parse_patch(&body, &state.limits)?;
    let message = state
        .messages
        .update(
            &principal.tenant,
            id,
            patch,
            if_match.as_ref(),
            &correlation_id,
        )
        .await?;
    Ok(message_response(StatusCode::OK, &message, vec![]))
}

/// Delete a message (it disappears from reads, listings and search).
#[utoipa::path(delete, path = "/v1/messages/{id}", tag = "messages",
    params(("id" = Uuid, Path), ("If-Match" = Option<String>, Header, description = "The ETag read; 412 if the message changed since")),
    responses(
        (status = 204, description = "Deleted"),
    ),
    security(("bearer" = [])))]
pub async fn delete(
    principal: Principal,
    State(state): State<SharedState>,
    CorrelationId(correlation_id): CorrelationId,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let id = path_uuid("id", &id)?;
    let if_match = IfMatch::from_headers(&headers)?;
    state
        .messages
        .delete(&principal.tenant, id, if_match.as_ref(), &correlation_id)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// A conversation's messages, newest first.
#[utoipa::path(get, path = "/v1/conversations/{conversationId}/messages", tag = "messages",
    params(("conversationId" = Uuid, Path), PageParams),
    responses(
        (status = 200, body = MessagePage),
    ),
    security(("bearer" = [])))]
pub async fn conversation(
    principal: Principal,
    State(state): State<SharedState>,
    Path(conversation): Path<String>,
    params: Result<Query<PageParams>, QueryRejection>,
) -> Result<Response, Problem> {
    let conversation = path_uuid("conversationId", &conversation)?;
    let Query(params) = params.map_err(|r| Problem::invalid_parameter("query", r.body_text()))?;
    let limit = limit_param(params.limit)?;
    let after = params
        .cursor
        .as_deref()
        .map(cursor::decode_page)
        .transpose()?;
    let page = state
        .messages
        .conversation(&principal.tenant, conversation, after.as_ref(), limit)
        .await?;
    let body = MessagePage {
        items: page.items,
        next_cursor: page.next.as_ref().map(cursor::encode_page),
    };
    Ok(json_response(StatusCode::OK, vec![], &body))
}

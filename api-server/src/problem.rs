//! Every HTTP error of the API as an RFC 9457 problem document (`application/problem+json`).
//!
//! Owns the [`Problem`] type, its constructors (one per status the API answers with) and its
//! rendering as an axum response. The constructors fix the status, `type` and `title`, so a
//! handler cannot send a 400 titled "Not Found" or invent a new problem type in passing.
//!
//! It never decides *whether* something is an error (the modules that parse and validate do),
//! and it never puts internals into a body: [`Problem::internal`] takes no argument, so an
//! error chain, a MongoDB message or a stack trace cannot reach a client through it. Logging the
//! cause is the caller's job.
//!
//! Problem types: where the HTTP status says everything (401, 404, 413, 415, 500) the `type` is
//! `about:blank` and the `title` is the status phrase, as RFC 9457 §4.2.1 asks. Where a client
//! must tell causes apart (400 malformed body vs bad header, 409, 412, 422 validation vs reused
//! idempotency key) the `type` is [`TYPE_PREFIX`] + a slug: stable identifiers, deliberately
//! not dereferenceable (a `tag:` URI, as RFC 9457 §3.1 allows), changed only with the API version.

use std::fmt;
use std::num::NonZeroU32;

use axum::http::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE};
use axum::http::{HeaderName, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use crate::fairness::Refusal;

/// The media type of every error body.
pub const CONTENT_TYPE_PROBLEM: &str = "application/problem+json";

/// Prefix of this API's own problem type URIs (RFC 4151 `tag:` URI).
pub const TYPE_PREFIX: &str = "tag:message-pipeline,2026:problem/";

/// The `type` of problems that mean no more than their HTTP status.
pub const ABOUT_BLANK: &str = "about:blank";

/// One violation in a request body: where (an RFC 6901 JSON Pointer into the body, `""` for
/// the body as a whole) and what is wrong there. The `errors` extension member carries a list
/// of them, so one 422 names every problem of a request at once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FieldError {
    pub pointer: String,
    pub message: String,
}

impl FieldError {
    pub fn new(pointer: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            pointer: pointer.into(),
            message: message.into(),
        }
    }
}

/// An RFC 9457 problem document, plus the response headers it implies.
///
/// `type` and `title` are boxed strings (set once by a constructor) to keep `Result<_, Problem>`
/// small on the happy path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Problem {
    #[serde(rename = "type")]
    #[schema(value_type = String)]
    pub type_uri: Box<str>,
    #[schema(value_type = String)]
    pub title: Box<str>,
    pub status: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// Extension member: every field error of the request (400 and 422 only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    /// `WWW-Authenticate` of a 401 (RFC 9110 §11.6.1 requires the header on a 401).
    #[serde(skip)]
    challenge: Challenge,
    /// `Retry-After` in seconds (429); 4 bytes keep the problem small (it is every handler's
    /// error type).
    #[serde(skip)]
    retry_after: Option<NonZeroU32>,
}

/// The `WWW-Authenticate` challenge a problem carries, if any.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Challenge {
    #[default]
    None,
    /// No credentials were sent: no error code (RFC 6750 §3.1).
    Bearer,
    /// Credentials were sent and refused.
    InvalidToken,
}

impl Challenge {
    fn header_value(self) -> Option<&'static str> {
        match self {
            Self::None => None,
            Self::Bearer => Some("Bearer"),
            Self::InvalidToken => Some("Bearer error=\"invalid_token\""),
        }
    }
}

impl Problem {
    fn new(status: StatusCode, slug: Option<&str>, title: &str) -> Self {
        Self {
            type_uri: slug
                .map_or_else(|| ABOUT_BLANK.to_owned(), |s| format!("{TYPE_PREFIX}{s}"))
                .into(),
            title: title.into(),
            status: status.as_u16(),
            detail: None,
            instance: None,
            errors: Vec::new(),
            challenge: Challenge::None,
            retry_after: None,
        }
    }

    fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// Sets `instance`, a URI reference for this occurrence (e.g. the request path).
    pub fn with_instance(mut self, instance: impl Into<String>) -> Self {
        self.instance = Some(instance.into());
        self
    }

    /// 400: the body is not JSON, or not JSON of the expected shape (wrong type, unknown
    /// field). Never a 500: the client sent it, the client can fix it. `errors` names the field
    /// when the parser knew it.
    pub fn malformed_body(detail: impl Into<String>, errors: Vec<FieldError>) -> Self {
        let mut p = Self::new(
            StatusCode::BAD_REQUEST,
            Some("malformed-body"),
            "Malformed request body",
        )
        .with_detail(detail);
        p.errors = errors;
        p
    }

    /// 400: a request header (`If-Match`, `Idempotency-Key`, ...) is syntactically invalid.
    pub fn invalid_header(header: &HeaderName, detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            Some("invalid-header"),
            "Invalid request header",
        )
        .with_detail(format!("{}: {}", header.as_str(), detail.into()))
    }

    /// 400: a query parameter or path segment is invalid (`limit`, `cursor`, an id, ...).
    pub fn invalid_parameter(name: &str, detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            Some("invalid-parameter"),
            "Invalid parameter",
        )
        .with_detail(format!("{name}: {}", detail.into()))
    }

    /// 401 without credentials: `WWW-Authenticate: Bearer` and no error code, as RFC 6750 §3.1
    /// asks when the request had no authentication information.
    pub fn missing_credentials() -> Self {
        let mut p = Self::new(StatusCode::UNAUTHORIZED, None, "Unauthorized")
            .with_detail("send `Authorization: Bearer <api key>`");
        p.challenge = Challenge::Bearer;
        p
    }

    /// 401 with credentials that are malformed or unknown. The detail says which of the two
    /// (the client knows what it sent) but never which keys exist.
    pub fn invalid_credentials(detail: impl Into<String>) -> Self {
        let mut p = Self::new(StatusCode::UNAUTHORIZED, None, "Unauthorized").with_detail(detail);
        p.challenge = Challenge::InvalidToken;
        p
    }

    /// 404: also the answer for another tenant's message (ARCHITECTURE.md property 6).
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, None, "Not Found").with_detail(detail)
    }

    /// 409: the request conflicts with the resource's current state.
    pub fn conflict(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, Some("conflict"), "Conflict").with_detail(detail)
    }

    /// 412: `If-Match` names no version the message has now.
    pub fn version_mismatch(current_version: u64) -> Self {
        Self::new(
            StatusCode::PRECONDITION_FAILED,
            Some("version-mismatch"),
            "Version mismatch",
        )
        .with_detail(format!(
            "If-Match does not match the current version \"{current_version}\"; read the message again and retry"
        ))
    }

    /// 413: the body exceeds the configured limit.
    pub fn content_too_large(limit_bytes: usize) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, None, "Content Too Large")
            .with_detail(format!("the request body exceeds {limit_bytes} bytes"))
    }

    /// 415: the body is not `application/json`.
    pub fn unsupported_media_type() -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            None,
            "Unsupported Media Type",
        )
        .with_detail("send the body as `Content-Type: application/json`")
    }

    /// 422: the body is well-formed JSON of the right shape but breaks the rules; `errors`
    /// lists every violation.
    pub fn validation(errors: Vec<FieldError>) -> Self {
        let n = errors.len();
        let mut p = Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("validation-failed"),
            "Validation failed",
        )
        .with_detail(format!(
            "the request body has {n} invalid field{}",
            if n == 1 { "" } else { "s" }
        ));
        p.errors = errors;
        p
    }

    /// 422: the `Idempotency-Key` was used before with a different body.
    pub fn idempotency_key_reused() -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("idempotency-key-reused"),
            "Idempotency key reused",
        )
        .with_detail("this Idempotency-Key was already used with a different request body")
    }

    /// 429: the tenant is over its request rate or has too many requests in flight.
    pub fn too_many_requests(tenant: &str, refusal: Refusal) -> Self {
        let what = match refusal {
            Refusal::Rate(_) => "its request rate",
            Refusal::Concurrency => "the requests it may have in flight at once",
        };
        let mut p = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            Some("tenant-over-limit"),
            "Too Many Requests",
        )
        .with_detail(format!(
            "tenant {tenant:?} is over {what} on this server; retry after the time Retry-After gives"
        ));
        p.retry_after =
            NonZeroU32::new(u32::try_from(refusal.retry_after_secs()).unwrap_or(u32::MAX));
        p
    }

    /// 503: a backing service (MongoDB, the search engine) cannot be reached; retry later.
    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, None, "Service Unavailable").with_detail(detail)
    }

    /// 500. Takes nothing on purpose: whatever failed is logged by the caller, not sent.
    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            None,
            "Internal Server Error",
        )
        .with_detail("the server failed to handle the request; retrying may help")
    }

    /// The HTTP status (constructors only build valid ones).
    pub fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.status, self.title)?;
        if let Some(detail) = &self.detail {
            write!(f, ": {detail}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Problem {}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        // Serializing strings and integers cannot fail; the fallback keeps the promise of a
        // problem+json body anyway.
        let body = serde_json::to_vec(&self).unwrap_or_else(|_| {
            br#"{"type":"about:blank","title":"Internal Server Error","status":500}"#.to_vec()
        });
        let mut response = (self.status_code(), body).into_response();
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE_PROBLEM));
        if let Some(challenge) = self.challenge.header_value() {
            headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
        }
        if let Some(secs) = self.retry_after {
            headers.insert(RETRY_AFTER, HeaderValue::from(secs.get()));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use axum::http::header::IF_MATCH;
    use serde_json::{Value, json};

    use super::*;

    async fn render(problem: Problem) -> (StatusCode, Response, Value) {
        let response = problem.into_response();
        let status = response.status();
        let (parts, body) = response.into_parts();
        let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap();
        let value: Value = serde_json::from_slice(&bytes).unwrap();
        (
            status,
            Response::from_parts(parts, axum::body::Body::empty()),
            value,
        )
    }

    #[tokio::test]
    async fn renders_every_constructor() {
        let field = FieldError::new("/content", "must not be empty");
        // (problem, status, type, title, www-authenticate, errors)
        type Case<'a> = (Problem, u16, &'a str, &'a str, Option<&'a str>, Value);
        let cases: Vec<Case> = vec![
            (
                Problem::malformed_body("expected `:` at line 1 column 9", vec![]),
                400,
                "tag:message-pipeline,2026:problem/malformed-body",
                "Malformed request body",
                None,
                Value::Null,
            ),
            (
                Problem::invalid_header(&IF_MATCH, "not an entity tag"),
                400,
                "tag:message-pipeline,2026:problem/invalid-header",
                "Invalid request header",
                None,
                Value::Null,
            ),
            (
                Problem::invalid_parameter("limit", "must be 1..=100"),
                400,
                "tag:message-pipeline,2026:problem/invalid-parameter",
                "Invalid parameter",
                None,
                Value::Null,
            ),
            (
                Problem::missing_credentials(),
                401,
                "about:blank",
                "Unauthorized",
                Some("Bearer"),
                Value::Null,
            ),
            (
                Problem::invalid_credentials("unknown API key"),
                401,
                "about:blank",
                "Unauthorized",
                Some("Bearer error=\"invalid_token\""),
                Value::Null,
            ),
            (
                Problem::not_found("no message x"),
                404,
                "about:blank",
                "Not Found",
                None,
                Value::Null,
            ),
            (
                Problem::conflict("deleted"),
                409,
                "tag:message-pipeline,2026:problem/conflict",
                "Conflict",
                None,
                Value::Null,
            ),
            (
                Problem::version_mismatch(3),
                412,
                "tag:message-pipeline,2026:problem/version-mismatch",
                "Version mismatch",
                None,
                Value::Null,
            ),
            (
                Problem::content_too_large(1024),
                413,
                "about:blank",
                "Content Too Large",
                None,
                Value::Null,
            ),
            (
                Problem::unsupported_media_type(),
                415,
                "about:blank",
                "Unsupported Media Type",
                None,
                Value::Null,
            ),
            (
                Problem::validation(vec![field.clone()]),
                422,
                "tag:message-pipeline,2026:problem/validation-failed",
                "Validation failed",
                None,
                json!([{"pointer": "/content", "message": "must not be empty"}]),
            ),
            (
                Problem::idempotency_key_reused(),
                422,
                "tag:message-pipeline,2026:problem/idempotency-key-reused",
                "Idempotency key reused",
                None,
                Value::Null,
            ),
            (
                Problem::unavailable("MongoDB is unreachable"),
                503,
                "about:blank",
                "Service Unavailable",
                None,
                Value::Null,
            ),
            (
                Problem::internal(),
                500,
                "about:blank",
                "Internal Server Error",
                None,
                Value::Null,
            ),
        ];
        for (problem, status, type_uri, title, challenge, errors) in cases {
            let expected = problem.clone();
            let (got_status, response, body) = render(problem).await;
            assert_eq!(got_status.as_u16(), status, "{expected}");
            assert_eq!(
                response.headers()[CONTENT_TYPE],
                CONTENT_TYPE_PROBLEM,
                "{expected}"
            );
            assert_eq!(
                response
                    .headers()
                    .get(WWW_AUTHENTICATE)
                    .map(|v| v.to_str().unwrap()),
                challenge,
                "{expected}"
            );
            assert_eq!(body["type"], type_uri, "{expected}");
            assert_eq!(body["title"], title, "{expected}");
            assert_eq!(body["status"], status, "{expected}");
            assert!(
                body["detail"].is_string(),
                "{expected}: every problem explains itself"
            );
            assert_eq!(body.get("instance"), None, "{expected}");
            assert_eq!(
                body.get("errors").cloned().unwrap_or(Value::Null),
                errors,
                "{expected}"
            );
            // The body round-trips into the type clients (and e2e tests) decode.
            let decoded: Problem = serde_json::from_value(body).unwrap();
            assert_eq!(decoded.status, status);
        }
    }

    #[tokio::test]
    async fn a_tenant_over_its_limit_is_told_when_to_come_back() {
        use std::time::Duration;
        for (refusal, retry_after) in [
            (Refusal::Rate(Duration::from_millis(2300)), "3"),
            (Refusal::Concurrency, "1"),
        ] {
            let (status, response, body) =
                render(Problem::too_many_requests("acme", refusal)).await;
            assert_eq!(status.as_u16(), 429);
            assert_eq!(response.headers()[CONTENT_TYPE], CONTENT_TYPE_PROBLEM);
            assert_eq!(response.headers()[RETRY_AFTER], retry_after);
            assert_eq!(
                body["type"],
                "tag:message-pipeline,2026:problem/tenant-over-limit"
            );
            assert!(
                body["detail"].as_str().unwrap().contains("\"acme\""),
                "{body}"
            );
        }
        let (_, response, _) = render(Problem::not_found("gone")).await;
        assert!(response.headers().get(RETRY_AFTER).is_none());
    }

    #[tokio::test]
    async fn instance_is_rendered_when_set() {
        let (_, _, body) = render(Problem::not_found("gone").with_instance("/messages/1")).await;
        assert_eq!(body["instance"], "/messages/1");
    }

    #[tokio::test]
    async fn internal_error_leaks_nothing() {
        let (_, _, body) = render(Problem::internal()).await;
        let mut keys: Vec<&str> = body
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(keys, ["detail", "status", "title", "type"]);
    }
}

//! `GET /v1/search`: full text on `content` in the search engine, always within the caller's
//! tenant and among live messages.
//!
//! Owns the query parameters' rules, the engine request (built by a pure function, so the
//! tenant and `deleted: false` filters are pinned by tests), and reading hits back into
//! [`Message`]s. Pagination uses `search_after` on a total order (score when there is a query,
//! then creation time, then id), wrapped in an opaque cursor.
//!
//! Search reads the index the indexer maintains, so it lags writes by the pipeline's freshness
//! (typically well under a second on the rig; see docs/benchmarks.md): a message just created may not
//! be found yet, and one just deleted may still be found until its tombstone is indexed.

use std::collections::HashSet;
use std::time::Duration;

use pipeline_contract::install::SearchEndpoint;
use pipeline_contract::search::{SearchDocument, field};
use pipeline_contract::search_client::SearchAccessError;
use pipeline_contract::time::Timestamp;
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::config::SearchArgs;
use crate::cursor;
use crate::problem::Problem;
use crate::store::Message;
use crate::validate::{UUID_RULE, parse_uuid};

/// Default and largest page size.
pub const DEFAULT_LIMIT: usize = 20;
pub const MAX_LIMIT: usize = 100;
/// Longest `q`, in characters as sent (before surrounding whitespace is trimmed).
pub const MAX_QUERY_CHARS: usize = 1024;

/// The query string as sent.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SearchParams {
    /// Words to find in `content` (all of them); without it, the newest messages match.
    pub q: Option<String>,
    pub conversation_id: Option<String>,
    pub sender_id: Option<String>,
    /// Created at or after (RFC 3339).
    pub from: Option<String>,
    /// Created before (RFC 3339).
    pub to: Option<String>,
    /// 1..=100, default 20.
    pub limit: Option<usize>,
    /// `nextCursor` of the previous page.
    pub cursor: Option<String>,
}

/// A validated search.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchQuery {
    pub text: Option<String>,
    pub conversation_id: Option<Uuid>,
    pub sender_id: Option<Uuid>,
    pub from: Option<Timestamp>,
    pub to: Option<Timestamp>,
    pub limit: usize,
    pub after: Option<Vec<Value>>,
}

fn uuid_param(name: &str, value: Option<&str>) -> Result<Option<Uuid>, Problem> {
    value
        .map(|v| parse_uuid(v).ok_or_else(|| Problem::invalid_parameter(name, UUID_RULE)))
        .transpose()
}

fn time_param(name: &str, value: Option<&str>) -> Result<Option<Timestamp>, Problem> {
    value
        .map(|v| {
            v.parse::<Timestamp>().map_err(|_| {
                Problem::invalid_parameter(
                    name,
                    "must be an RFC 3339 time, e.g. 2026-01-31T12:00:00Z",
                )
            })
        })
        .transpose()
}

/// A page size parameter: 1..=100, default 20.
pub fn limit_param(limit: Option<usize>) -> Result<usize, Problem> {
    match limit {
        None => Ok(DEFAULT_LIMIT),
        Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        Some(_) => Err(Problem::invalid_parameter(
            "limit",
            format!("must be between 1 and {MAX_LIMIT}"),
        )),
    }
}

impl SearchQuery {
    pub fn from_params(params: SearchParams) -> Result<Self, Problem> {
        if let Some(q) = &params.q {
            let chars = q.chars().count();
            if chars > MAX_QUERY_CHARS {
                return Err(Problem::invalid_parameter(
                    "q",
                    format!("is {chars} characters, at most {MAX_QUERY_CHARS} allowed"),
                ));
            }
        }
        let text = params
            .q
            .map(|q| q.trim().to_owned())
            .filter(|q| !q.is_empty());
        // `from` at or after `to` is an empty interval: no message matches, which the engine's
        // range query answers by itself.
        let from = time_param("from", params.from.as_deref())?;
        let to = time_param("to", params.to.as_deref())?;
        let sort_len = if text.is_some() { 3 } else { 2 };
        Ok(Self {
            conversation_id: uuid_param("conversationId", params.conversation_id.as_deref())?,
            sender_id: uuid_param("senderId", params.sender_id.as_deref())?,
            from,
            to,
            limit: limit_param(params.limit)?,
            after: params
                .cursor
                .as_deref()
                .map(|c| cursor::decode_search(c, sort_len))
                .transpose()?,
            text,
        })
    }

    /// The engine request: tenant and `deleted: false` always filter; one hit more than the
    /// page tells whether there is a next one.
    pub fn body(&self, tenant: &str) -> Value {
        let mut filter = vec![
            json!({"term": {field::TENANT_ID: tenant}}),
            json!({"term": {field::DELETED: false}}),
        ];
        if let Some(c) = self.conversation_id {
            filter.push(json!({"term": {field::CONVERSATION_ID: c.to_string()}}));
        }
        if let Some(s) = self.sender_id {
            filter.push(json!({"term": {field::SENDER_ID: s.to_string()}}));
        }
        if self.from.is_some() || self.to.is_some() {
            let mut range = serde_json::Map::new();
            if let Some(from) = self.from {
                range.insert("gte".into(), json!(from.to_string()));
            }
            if let Some(to) = self.to {
                range.insert("lt".into(), json!(to.to_string()));
            }
            filter.push(json!({"range": {field::TIMESTAMP: range}}));
        }
        let mut bool_query = json!({"filter": filter});
        let mut sort = vec![json!({field::TIMESTAMP: "desc"}), json!({field::ID: "asc"})];
        if let Some(text) = &self.text {
            bool_query["must"] =
                json!([{"match": {field::CONTENT: {"query": text, "operator": "and"}}}]);
            sort.insert(0, json!({"_score": "desc"}));
        }
        let mut body = json!({
            "size": self.limit + 1,
            "track_total_hits": false,
            "query": {"bool": bool_query},
            "sort": sort,
        });
        if let Some(after) = &self.after {
            body["search_after"] = json!(after);
        }
        body
    }
}

/// One page of results.
#[derive(Debug, Clone, PartialEq)]
pub struct Hits {
    pub items: Vec<Message>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Response {
    hits: HitList,
}

#[derive(Debug, Deserialize)]
struct HitList {
    hits: Vec<Hit>,
}

#[derive(Debug, Deserialize)]
struct Hit {
    #[serde(rename = "_source")]
    source: SearchDocument,
    #[serde(default)]
    sort: Vec<Value>,
}

/// Reads an engine response into a page of `limit` messages.
pub fn read_hits(body: &[u8], limit: usize) -> Result<Hits, serde_json::Error> {
    let response: Response = serde_json::from_slice(body)?;
    let more = response.hits.hits.len() > limit;
    let mut hits = response.hits.hits;
    hits.truncate(limit);
    let next_cursor = more
        .then(|| hits.last())
        .flatten()
        .and_then(|h| cursor::encode_search(&h.sort));
    let items = hits
        .into_iter()
        .filter_map(|h| {
            let d = h.source;
            Some(Message {
                id: d.id,
                conversation_id: d.conversation_id,
                sender_id: d.sender_id?,
                content: d.content?,
                timestamp: d.timestamp?,
                updated_at: d.updated_at,
                metadata: d.metadata.unwrap_or_default(),
                version: d.version,
            })
        })
        .collect();
    Ok(Hits { items, next_cursor })
}

/// The search engine as the API uses it.
#[derive(Debug, Clone)]
pub struct SearchClient {
    http: reqwest::Client,
    endpoint: SearchEndpoint,
    /// `/<alias>/_search`.
    path: String,
}

impl SearchClient {
    pub fn new(args: &SearchArgs) -> Result<Option<Self>, SearchAccessError> {
        let Some(base) = &args.search_url else {
            return Ok(None);
        };
        let http = args
            .access
            .http_client(Duration::from_millis(args.search_timeout_ms))?;
        Ok(Some(Self {
            http,
            endpoint: args.access.endpoint(base),
            path: format!("/{}/_search", args.search_alias),
        }))
    }

    /// Which of `ids` the index holds (a document, live or tombstone, whatever its tenant).
    pub async fn held(&self, ids: &[String]) -> Result<HashSet<String>, String> {
        let body = json!({
            "query": {"ids": {"values": ids}},
            "_source": false,
            "size": ids.len(),
        });
        let response = self
            .endpoint
            .request(&self.http, reqwest::Method::POST, &self.path)
            .json(&body)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let answer: Value = response.json().await.map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(format!("the search engine answered {status}: {answer}"));
        }
        Ok(answer["hits"]["hits"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|h| h["_id"].as_str().map(str::to_owned))
            .collect())
    }

    pub async fn search(&self, tenant: &str, query: &SearchQuery) -> Result<Hits, Problem> {
        let request = self
            .endpoint
            .request(&self.http, reqwest::Method::POST, &self.path)
            .json(&query.body(tenant));
        let response = request.send().await.map_err(|error| {
            tracing::warn!(%error, "search engine unreachable");
            Problem::unavailable("the search engine is unreachable; retry later")
        })?;
        let status = response.status();
        let body = response.bytes().await.map_err(|error| {
            tracing::warn!(%error, "reading the search response failed");
            Problem::unavailable("the search engine did not answer in full; retry later")
        })?;
        if status == reqwest::StatusCode::NOT_FOUND {
            tracing::error!("search alias missing: is the index installed?");
            return Err(Problem::unavailable(
                "the search index is not installed yet",
            ));
        }
        if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            tracing::warn!(%status, "search engine failed");
            return Err(Problem::unavailable(
                "the search engine failed; retry later",
            ));
        }
        if !status.is_success() {
            tracing::error!(%status, body = %String::from_utf8_lossy(&body), "search refused");
            return Err(Problem::internal());
        }
        read_hits(&body, query.limit).map_err(|error| {
            tracing::error!(%error, "unexpected search response");
            Problem::internal()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(f: impl FnOnce(&mut SearchParams)) -> SearchParams {
        let mut p = SearchParams::default();
        f(&mut p);
        p
    }

    #[test]
    fn every_query_filters_by_tenant_and_live_messages() {
        let conv = Uuid::from_u128(1);
        let cases = [
            params(|_| {}),
            params(|p| p.q = Some("hello world".into())),
            params(|p| {
                p.q = Some("x".into());
                p.conversation_id = Some(conv.to_string());
                p.sender_id = Some(Uuid::from_u128(2).to_string());
                p.from = Some("2026-01-01T00:00:00Z".into());
                p.to = Some("2026-02-01T00:00:00+01:00".into());
            }),
        ];
        for p in cases {
            let query = SearchQuery::from_params(p).unwrap();
            let body = query.body("tenant-a");
            let filter = body["query"]["bool"]["filter"].as_array().unwrap();
            assert_eq!(filter[0], json!({"term": {"tenantId": "tenant-a"}}));
            assert_eq!(filter[1], json!({"term": {"deleted": false}}));
            assert_eq!(body["size"], json!(21));
        }
    }

    #[test]
    fn text_filters_and_sort() {
        let q = SearchQuery::from_params(params(|p| {
            p.q = Some("  hello world ".into());
            p.conversation_id = Some(Uuid::from_u128(1).to_string());
            p.from = Some("2026-01-01T00:00:00Z".into());
            p.to = Some("2026-02-01T00:00:00+01:00".into());
            p.limit = Some(5);
        }))
        .unwrap();
        let body = q.body("t");
        assert_eq!(
            body["query"]["bool"]["must"],
            json!([{"match": {"content": {"query": "hello world", "operator": "and"}}}])
        );
        let filter = body["query"]["bool"]["filter"].as_array().unwrap();
        assert_eq!(
            filter[2],
            json!({"term": {"conversationId": Uuid::from_u128(1).to_string()}})
        );
        assert_eq!(
            filter[3],
            json!({"range": {"timestamp": {"gte": "2026-01-01T00:00:00.000Z", "lt": "2026-01-31T23:00:00.000Z"}}})
        );
        assert_eq!(
            body["sort"],
            json!([{"_score": "desc"}, {"timestamp": "desc"}, {"id": "asc"}])
        );
        assert_eq!(body["size"], json!(6));
        let blank = SearchQuery::from_params(params(|p| p.q = Some("   ".into()))).unwrap();
        assert_eq!(blank.text, None);
        assert_eq!(
            blank.body("t")["sort"],
            json!([{"timestamp": "desc"}, {"id": "asc"}])
        );
    }

    #[test]
    fn an_empty_interval_is_a_query_that_matches_nothing() {
        let q = SearchQuery::from_params(params(|p| {
            p.from = Some("2026-02-01T00:00:00Z".into());
            p.to = Some("2026-01-01T00:00:00Z".into());
        }))
        .unwrap();
        assert!(q.from > q.to);
        // 1024 characters of two bytes each are within the limit.
        SearchQuery::from_params(params(|p| p.q = Some("é".repeat(1024)))).unwrap();
    }

    #[test]
    fn bad_parameters_are_400_naming_them() {
        let cases: Vec<(SearchParams, &str)> = vec![
            (
                params(|p| p.conversation_id = Some("x".into())),
                "conversationId: ",
            ),
            (params(|p| p.sender_id = Some("x".into())), "senderId: "),
            (params(|p| p.from = Some("yesterday".into())), "from: "),
            (params(|p| p.limit = Some(0)), "limit: "),
            (params(|p| p.limit = Some(101)), "limit: "),
            (params(|p| p.q = Some("x".repeat(1025))), "q: "),
            // Counted as sent, before trimming.
            (
                params(|p| p.q = Some(format!(" {} ", "é".repeat(1023)))),
                "q: ",
            ),
            (
                params(|p| p.conversation_id = Some(Uuid::from_u128(1).simple().to_string())),
                "conversationId: ",
            ),
            (params(|p| p.cursor = Some("zz".into())), "cursor: "),
            // A page cursor is not a search cursor.
            (
                params(|p| p.cursor = Some("1_0123456789abcdef0123456789abcdef".into())),
                "cursor: ",
            ),
        ];
        for (p, prefix) in cases {
            let problem = SearchQuery::from_params(p).unwrap_err();
            assert_eq!(problem.status, 400);
            assert!(
                problem.detail.as_deref().unwrap().starts_with(prefix),
                "{problem}"
            );
        }
    }

    #[test]
    fn hits_become_messages_and_a_cursor_when_there_are_more() {
        let hit = |n: u128| {
            json!({"_id": Uuid::from_u128(n).to_string(), "_source": {
                "id": Uuid::from_u128(n), "tenantId": "t", "conversationId": Uuid::from_u128(9),
                "senderId": Uuid::from_u128(8), "content": "c", "timestamp": "2026-01-01T00:00:00.000Z",
                "version": 2, "deleted": false, "metadata": {"k": 1}},
                "sort": [1.5, 1_767_225_600_000i64, Uuid::from_u128(n).to_string()]})
        };
        let body = json!({"hits": {"hits": [hit(1), hit(2), hit(3)]}}).to_string();
        let page = read_hits(body.as_bytes(), 2).unwrap();
        assert_eq!(page.items.len(), 2);
        assert_eq!(page.items[1].id, Uuid::from_u128(2));
        assert_eq!(page.items[0].metadata["k"], json!(1));
        let cursor = page.next_cursor.unwrap();
        assert_eq!(
            cursor::decode_search(&cursor, 3).unwrap(),
            vec![
                json!(1.5),
                json!(1_767_225_600_000i64),
                json!(Uuid::from_u128(2).to_string())
            ]
        );
        let last = read_hits(body.as_bytes(), 3).unwrap();
        assert_eq!((last.items.len(), last.next_cursor), (3, None));
    }
}

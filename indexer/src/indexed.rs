//! The index as the audit and the rebuild read and repair it: every document in id order, a
//! page at a time (`search_after` on the `id` keyword), the documents of chosen ids with their
//! sequence numbers, and the repairs: whole documents from MongoDB with external versions, and
//! deletes of orphans conditional on the sequence number the audit saw; and the rebuild's
//! writes through an alias (the alias itself is the installer's, `pipeline_contract::install`).

use std::collections::HashMap;

use pipeline_contract::access::{Refused, Service, search_error_cause, search_status_cause};
use pipeline_contract::install::SearchEndpoint;
use pipeline_contract::search::{IndexLayout, SearchDocument, field};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::audit::Held;

/// A request to the search engine that failed.
#[derive(Debug, thiserror::Error)]
pub enum IndexedError {
    #[error("{0}")]
    Refused(Refused),
    #[error("{what} at {endpoint}: {source}")]
    Http {
        what: &'static str,
        endpoint: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{what} at {endpoint}: HTTP {status}: {body}")]
    Status {
        what: &'static str,
        endpoint: String,
        status: StatusCode,
        body: String,
    },
}

/// A document of the index as the audit saw it: where it is and at which sequence number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    pub held: Held,
    pub index: String,
    pub seq_no: i64,
    pub primary_term: i64,
}

/// The outcome of one repair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Repair {
    Done,
    /// The engine refused the write (a newer version is there, or the document changed since
    /// the audit saw it); the text says which.
    Refused(String),
}

/// The search engine behind the alias.
#[derive(Debug, Clone)]
pub struct Indexed {
    http: reqwest::Client,
    endpoint: SearchEndpoint,
    layout: IndexLayout,
}

impl Indexed {
    pub fn new(http: reqwest::Client, endpoint: SearchEndpoint, layout: IndexLayout) -> Self {
        Self {
            http,
            endpoint,
            layout,
        }
    }

    async fn send(
        &self,
        what: &'static str,
        method: Method,
        path: &str,
        body: Option<Body>,
    ) -> Result<(StatusCode, Value), IndexedError> {
        let endpoint = self.endpoint.base_url();
        let mut request = self.endpoint.request(&self.http, method, path);
        request = match body {
            Some(Body::Json(v)) => request.json(&v),
            Some(Body::Ndjson(bytes)) => request
                .header(reqwest::header::CONTENT_TYPE, "application/x-ndjson")
                .body(bytes),
            None => request,
        };
        let http_error = |source: reqwest::Error| match search_error_cause(&source) {
            Some(cause) => IndexedError::Refused(Refused::new(
                Service::Search,
                cause,
                endpoint,
                source.to_string(),
            )),
            None => IndexedError::Http {
                what,
                endpoint: endpoint.to_owned(),
                source,
            },
        };
        let response = request.send().await.map_err(http_error)?;
        let status = response.status();
        let text = response.text().await.map_err(http_error)?;
        if let Some(cause) = search_status_cause(status.as_u16()) {
            return Err(IndexedError::Refused(Refused::new(
                Service::Search,
                cause,
                endpoint,
                format!("{what}: HTTP {status}: {text}"),
            )));
        }
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    }

    fn status(&self, what: &'static str, status: StatusCode, body: &Value) -> IndexedError {
        IndexedError::Status {
            what,
            endpoint: self.endpoint.base_url().to_owned(),
            status,
            body: body.to_string(),
        }
    }

    /// Makes every write to the alias visible to search, when the principal may (a refresh
    /// refused for lack of permission is not an error: the engine's own refresh follows).
    pub async fn refresh(&self) -> Result<(), IndexedError> {
        let path = format!("/{}/_refresh", self.layout.alias());
        match self.send("refresh", Method::POST, &path, None).await {
            Err(IndexedError::Refused(r))
                if r.refusal.cause == pipeline_contract::access::Cause::AuthorizationFailed =>
            {
                Ok(())
            }
            Err(e) => Err(e),
            Ok((s, _)) if s.is_success() => Ok(()),
            Ok((s, body)) => Err(self.status("refresh", s, &body)),
        }
    }

    /// Up to `n` documents after the id `after`, in id (byte) order; `true` with the last.
    pub async fn page(
        &self,
        after: Option<&str>,
        n: usize,
    ) -> Result<(Vec<Held>, bool), IndexedError> {
        let mut body = json!({
            "size": n,
            "sort": [{field::ID: "asc"}],
            "_source": [field::DELETED],
            "version": true,
            "track_total_hits": false,
            "query": {"match_all": {}},
        });
        if let Some(after) = after {
            body["search_after"] = json!([after]);
        }
        let hits = self.search("read the index in id order", body).await?;
        let page: Vec<Held> = hits.iter().map(|h| located(h).held).collect();
        let last = page.len() < n;
        Ok((page, last))
    }

    /// The documents of `ids` the index holds, by id.
    pub async fn lookup(&self, ids: &[String]) -> Result<HashMap<String, Located>, IndexedError> {
        let body = json!({
            "size": ids.len(),
            "query": {"ids": {"values": ids}},
            "_source": [field::DELETED],
            "version": true,
            "seq_no_primary_term": true,
        });
        let hits = self.search("read documents of the index", body).await?;
        Ok(hits
            .iter()
            .map(|h| {
                let l = located(h);
                (l.held.id.clone(), l)
            })
            .collect())
    }

    async fn search(&self, what: &'static str, body: Value) -> Result<Vec<Value>, IndexedError> {
        let path = format!("/{}/_search", self.layout.alias());
        let (status, answer) = self
            .send(what, Method::POST, &path, Some(Body::Json(body)))
            .await?;
        if !status.is_success() {
            return Err(self.status(what, status, &answer));
        }
        Ok(answer["hits"]["hits"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// Writes each document with its external version (so a newer one written meanwhile
    /// stays), and deletes each orphan unless it changed since it was seen; the outcome of each,
    /// in the order given.
    pub async fn repair(
        &self,
        documents: &[SearchDocument],
        orphans: &[Located],
    ) -> Result<Vec<Repair>, IndexedError> {
        if documents.is_empty() && orphans.is_empty() {
            return Ok(Vec::new());
        }
        let mut body = crate::bulk::encode(&self.layout, documents).body;
        for orphan in orphans {
            crate::bulk::encode_orphan_delete(
                &orphan.index,
                &orphan.held.id,
                orphan.seq_no,
                orphan.primary_term,
                &mut body,
            );
        }
        let what = "repair the index";
        let (status, answer) = self
            .send(what, Method::POST, "/_bulk", Some(Body::Ndjson(body)))
            .await?;
        if !status.is_success() {
            return Err(self.status(what, status, &answer));
        }
        let items = answer["items"].as_array().cloned().unwrap_or_default();
        if items.len() != documents.len() + orphans.len() {
            return Err(self.status(what, status, &answer));
        }
        Ok(items.iter().map(repair_outcome).collect())
    }
}

/// What a write of documents did: applied, already newer in the index, or rejected (the
/// first reasons kept).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Written {
    pub applied: u64,
    pub newer: u64,
    pub rejected: u64,
    pub reasons: Vec<String>,
}

/// Most attempts of an item the engine answered 429 or 5xx.
const WRITE_ATTEMPTS: u32 = 6;

/// The rebuild's writes.
impl Indexed {
    /// The HTTP client and endpoint, for the installer's requests (the alias, the swap).
    pub fn engine(&self) -> (&reqwest::Client, &SearchEndpoint) {
        (&self.http, &self.endpoint)
    }

    /// Writes `docs` through the alias of `target` with external versions; items the engine
    /// answers 429 or 5xx are sent again with backoff.
    pub async fn write(
        &self,
        target: &IndexLayout,
        docs: Vec<SearchDocument>,
    ) -> Result<Written, IndexedError> {
        let what = "write documents";
        let mut written = Written::default();
        let mut pending = docs;
        for attempt in 1..=WRITE_ATTEMPTS {
            if pending.is_empty() {
                break;
            }
            let body = crate::bulk::encode(target, &pending).body;
            let (status, answer) = self
                .send(what, Method::POST, "/_bulk", Some(Body::Ndjson(body)))
                .await?;
            let items = answer["items"].as_array().cloned().unwrap_or_default();
            if !status.is_success() || items.len() != pending.len() {
                return Err(self.status(what, status, &answer));
            }
            let mut again = Vec::new();
            for (doc, item) in pending.into_iter().zip(&items) {
                let result = &item["index"];
                match result["status"].as_u64().unwrap_or(0) {
                    200..=299 => written.applied += 1,
                    409 => written.newer += 1,
                    429 | 500..=599 if attempt < WRITE_ATTEMPTS => again.push(doc),
                    status => {
                        written.rejected += 1;
                        if written.reasons.len() < 10 {
                            written.reasons.push(format!(
                                "{}: HTTP {status} {}",
                                doc.id, result["error"]["reason"]
                            ));
                        }
                    }
                }
            }
            pending = again;
            if !pending.is_empty() {
                tokio::time::sleep(std::time::Duration::from_millis(100 << attempt)).await;
            }
        }
        Ok(written)
    }
}

enum Body {
    Json(Value),
    Ndjson(Vec<u8>),
}

fn located(hit: &Value) -> Located {
    Located {
        held: Held {
            id: hit["_id"].as_str().unwrap_or_default().to_owned(),
            version: hit["_version"].as_u64().unwrap_or(0),
            deleted: hit["_source"][field::DELETED].as_bool().unwrap_or(false),
        },
        index: hit["_index"].as_str().unwrap_or_default().to_owned(),
        seq_no: hit["_seq_no"].as_i64().unwrap_or(-1),
        primary_term: hit["_primary_term"].as_i64().unwrap_or(0),
    }
}

/// One item of the repair's bulk answer. A delete of a document already gone leaves the index
/// as the repair wanted it.
fn repair_outcome(item: &Value) -> Repair {
    let (action, result) = item
        .as_object()
        .and_then(|o| o.iter().next())
        .map_or(("", &Value::Null), |(k, v)| (k.as_str(), v));
    let status = result["status"].as_u64().unwrap_or(0);
    match (action, status) {
        (_, 200..=299) | ("delete", 404) => Repair::Done,
        _ => Repair::Refused(format!(
            "HTTP {status} {}: {}",
            result["error"]["type"].as_str().unwrap_or_default(),
            result["error"]["reason"].as_str().unwrap_or_default()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hit_is_where_and_what_the_index_holds() {
        let hit = json!({"_index": "m-000001", "_id": "a", "_version": 4, "_seq_no": 9,
            "_primary_term": 1, "_source": {"deleted": true}});
        assert_eq!(
            located(&hit),
            Located {
                held: Held {
                    id: "a".into(),
                    version: 4,
                    deleted: true
                },
                index: "m-000001".into(),
                seq_no: 9,
                primary_term: 1,
            }
        );
        assert!(
            !located(&json!({"_id": "b", "_version": 1, "_source": {}}))
                .held
                .deleted
        );
    }

    #[test]
    fn repair_items_are_done_or_refused_with_the_reason() {
        let rows = [
            (json!({"index": {"status": 201}}), Repair::Done),
            (json!({"index": {"status": 200}}), Repair::Done),
            (json!({"delete": {"status": 200}}), Repair::Done),
            (json!({"delete": {"status": 404}}), Repair::Done),
            (
                json!({"index": {"status": 409, "error": {"type": "version_conflict_engine_exception", "reason": "current version [5] is higher"}}}),
                Repair::Refused(
                    "HTTP 409 version_conflict_engine_exception: current version [5] is higher"
                        .into(),
                ),
            ),
            (
                json!({"delete": {"status": 409, "error": {"type": "version_conflict_engine_exception", "reason": "seq no"}}}),
                Repair::Refused("HTTP 409 version_conflict_engine_exception: seq no".into()),
            ),
            (
                json!({"index": {"status": 404}}),
                Repair::Refused("HTTP 404 : ".into()),
            ),
        ];
        for (item, want) in rows {
            assert_eq!(repair_outcome(&item), want, "{item}");
        }
    }
}

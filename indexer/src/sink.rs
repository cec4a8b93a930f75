//! The search engine at the edge: sends one `_bulk` body and turns the answer into the plain data
//! `classify` decides on. Also checks at start that the write alias exists.
//!
//! It never decides what a status means (that is `classify`'s job) and never retries: one call,
//! one request.

use pipeline_contract::access::{
    Cause, RefusalLog, Refused, Service, search_error_cause, search_status_cause,
};
use pipeline_contract::install::SearchEndpoint;
use pipeline_contract::search::IndexLayout;
use serde::Deserialize;
use serde_json::Value;

use crate::classify::{ItemResult, RequestOutcome};

#[derive(Debug, Default, Deserialize)]
struct BulkResponse {
    #[serde(default)]
    items: Vec<BulkItem>,
    #[serde(default)]
    error: Option<ErrorField>,
}

/// One item of a bulk response, keyed by its action: `index` is the only one we send.
#[derive(Debug, Deserialize)]
struct BulkItem {
    #[serde(default)]
    index: Option<ItemBody>,
}

#[derive(Debug, Default, Deserialize)]
struct ItemBody {
    #[serde(default)]
    status: u16,
    #[serde(default)]
    error: Option<EngineError>,
}

#[derive(Debug, Deserialize)]
struct EngineError {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    reason: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ErrorField {
    Detailed(EngineError),
    Text(String),
}

/// `_bulk`, answering only each item's status and error, and the request's error.
const BULK_PATH: &str = "_bulk?filter_path=items.*.status,items.*.error,error";

/// Writes bulk bodies to the alias of one index layout.
#[derive(Debug, Clone)]
pub struct SearchSink {
    http: reqwest::Client,
    endpoint: SearchEndpoint,
    layout: IndexLayout,
    refusals: RefusalLog,
}

/// The alias the indexer writes to is not there.
#[derive(Debug, thiserror::Error)]
pub enum AliasCheckError {
    #[error(
        "alias {alias:?} does not exist on {url}: install the index layout first (the operator does; \
         locally use pipeline_contract::install)"
    )]
    Missing { alias: String, url: String },
    #[error("cannot check alias {alias:?} on {url}: {detail}")]
    Unreachable {
        alias: String,
        url: String,
        detail: String,
    },
    /// The engine refused the indexer's credentials, CA or role.
    #[error("checking alias {alias:?}: {refused}")]
    Refused { alias: String, refused: Refused },
}

impl SearchSink {
    /// The sink writing through `endpoint` with `http` (which carries the timeouts and the CA).
    pub fn new(endpoint: SearchEndpoint, http: reqwest::Client, layout: IndexLayout) -> Self {
        Self {
            http,
            endpoint,
            layout,
            refusals: RefusalLog::default(),
        }
    }

    /// The sink recording the refusals it meets into `log`, which `/ready` and the Lease read.
    #[must_use]
    pub fn recording_refusals(mut self, log: RefusalLog) -> Self {
        self.refusals = log;
        self
    }

    /// Records a refusal (`cause`, in the words of `detail`).
    fn refused(&self, cause: Cause, detail: String) -> Refused {
        let refused = Refused::new(Service::Search, cause, self.endpoint.base_url(), detail);
        self.refusals.record(refused.clone());
        refused
    }

    pub fn layout(&self) -> &IndexLayout {
        &self.layout
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.endpoint
            .request(&self.http, method, &format!("/{path}"))
    }

    /// Checks that the alias exists, so a missing layout is one clear error at start rather than
    /// a breaker that opens for a reason the operator has to dig out of the logs.
    pub async fn check_alias(&self) -> Result<(), AliasCheckError> {
        let alias = self.layout.alias().to_owned();
        let url = self.endpoint.base_url().to_owned();
        let response = match self
            .request(reqwest::Method::GET, &self.layout.alias_lookup_path())
            .send()
            .await
        {
            Ok(response) => response,
            Err(e) => {
                let detail = error_chain(&e);
                return Err(match search_error_cause(&e) {
                    Some(cause) => AliasCheckError::Refused {
                        alias,
                        refused: self.refused(cause, detail),
                    },
                    None => AliasCheckError::Unreachable { alias, url, detail },
                });
            }
        };
        let status = response.status();
        if let Some(cause) = search_status_cause(status.as_u16()) {
            let body = response.text().await.unwrap_or_default();
            return Err(AliasCheckError::Refused {
                alias,
                refused: self.refused(cause, format!("HTTP {status}: {body}")),
            });
        }
        match status.as_u16() {
            200 => Ok(()),
            404 => Err(AliasCheckError::Missing { alias, url }),
            status => Err(AliasCheckError::Unreachable {
                alias,
                url,
                detail: format!("HTTP {status}"),
            }),
        }
    }

    /// Sends one bulk body. Returns the request's outcome and, for a 2xx answer, the result of
    /// every item in the order of the body.
    pub async fn bulk(&self, body: Vec<u8>) -> (RequestOutcome, Vec<ItemResult>) {
        let sent = self
            // Only what `classify` reads: a few bytes per item instead of a couple of hundred
            // (index, id, version, result, shards, seq_no, ...) for the engine to write and
            // for us to read.
            .request(reqwest::Method::POST, BULK_PATH)
            .header(reqwest::header::CONTENT_TYPE, "application/x-ndjson")
            .body(body)
            .send()
            .await;
        let response = match sent {
            Ok(r) => r,
            Err(e) => {
                if let Some(cause) = search_error_cause(&e) {
                    self.refused(cause, error_chain(&e));
                }
                return (no_response(&e), Vec::new());
            }
        };
        let status = response.status().as_u16();
        let bytes = match response.bytes().await {
            Ok(bytes) => bytes,
            Err(e) => return (no_response(&e), Vec::new()),
        };
        // Typed, so the (large) response is never held as a `Value`; anything else in it is
        // skipped. A body that is not a bulk response (a proxy's error page) has no items.
        let parsed: BulkResponse = serde_json::from_slice(&bytes).unwrap_or_default();
        let (error_type, reason) = match parsed.error {
            Some(ErrorField::Detailed(e)) => (e.kind, e.reason),
            Some(ErrorField::Text(text)) => (None, Some(text)),
            None => (None, None),
        };
        if let Some(cause) = search_status_cause(status) {
            let detail = format!("bulk: HTTP {status}: {}", reason.as_deref().unwrap_or(""));
            self.refused(cause, detail);
        }
        let outcome = RequestOutcome::Response {
            status,
            error_type,
            reason,
        };
        let items = parsed
            .items
            .into_iter()
            .map(|item| {
                let result = item.index.unwrap_or_default();
                let (error_type, reason) =
                    result.error.map_or((None, None), |e| (e.kind, e.reason));
                ItemResult {
                    status: result.status,
                    error_type,
                    reason,
                }
            })
            .collect();
        (outcome, items)
    }
}

impl SearchSink {
    /// Runs `_delete_by_query` on the alias; returns how many documents it deleted.
    pub async fn delete_by_query(&self, query: &Value) -> Result<u64, String> {
        let path = format!(
            "{}/_delete_by_query?conflicts=proceed&refresh=true",
            self.layout.alias()
        );
        let response = self
            .request(reqwest::Method::POST, &path)
            .json(query)
            .send()
            .await
            .map_err(|e| error_chain(&e))?;
        let status = response.status();
        let body: Value = response.json().await.map_err(|e| error_chain(&e))?;
        if !status.is_success() {
            return Err(format!("HTTP {status}: {body}"));
        }
        Ok(body["deleted"].as_u64().unwrap_or(0))
    }
}

/// The outcome of a request that got no (complete) response.
fn no_response(error: &reqwest::Error) -> RequestOutcome {
    if error.is_timeout() {
        RequestOutcome::Timeout
    } else {
        RequestOutcome::Transport {
            message: error_chain(error),
        }
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

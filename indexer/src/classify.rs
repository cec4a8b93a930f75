//! What to do with the answer to a bulk request (ARCHITECTURE.md property 4).
//!
//! Owns two decisions: what the outcome of a whole `_bulk` request means (look at the items,
//! split the batch, or count a failure against the breaker), and what each item of a 2xx
//! response means (done, retry, dead-letter with a class, or a failure of the whole pipeline).
//! The rule behind both: retry what can succeed, dead-letter only what can never succeed as it
//! is, and never dead-letter because the engine, the index or the credentials are broken: such
//! failures stall the pipeline through the breaker and the records wait in Kafka.
//!
//! Input is plain data (status, error `type`, error `reason` as the engines' bulk responses carry
//! them), so no HTTP or engine client type reaches this module. It never sleeps, sends or writes:
//! it only decides.

use std::fmt;

use pipeline_contract::dlq::ErrorClass;

/// How the whole `_bulk` request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestOutcome {
    /// No HTTP response: connection refused or reset, DNS, TLS.
    Transport { message: String },
    /// No response within the request timeout.
    Timeout,
    /// An HTTP response; `error_type`/`reason` are the body's `error.type`/`error.reason` when
    /// it has them.
    Response {
        status: u16,
        error_type: Option<String>,
        reason: Option<String>,
    },
}

/// One item of a 2xx bulk response: its `status` and, when it failed, `error.type` and
/// `error.reason`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemResult {
    pub status: u16,
    pub error_type: Option<String>,
    pub reason: Option<String>,
}

impl ItemResult {
    pub fn ok(status: u16) -> Self {
        Self {
            status,
            error_type: None,
            reason: None,
        }
    }

    pub fn error(status: u16, error_type: &str, reason: &str) -> Self {
        Self {
            status,
            error_type: Some(error_type.to_owned()),
            reason: Some(reason.to_owned()),
        }
    }
}

/// Why the pipeline as a whole cannot write; low-cardinality, for the failure metric's label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureKind {
    Transport,
    Timeout,
    /// 401/403: credentials missing, wrong or without the privilege to write.
    AuthRejected,
    /// The alias resolves to no writable index: missing, closed, or no write index.
    IndexUnavailable,
    /// A cluster or index block, e.g. the flood-stage disk watermark's read-only block.
    ClusterBlock,
    /// 429 on the whole request.
    Overloaded,
    /// 5xx on the whole request.
    ServerError,
    /// Any other status on the whole request, e.g. a 400 for a body the engine cannot parse.
    UnexpectedResponse,
}

impl FailureKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Transport => "transport",
            Self::Timeout => "timeout",
            Self::AuthRejected => "auth-rejected",
            Self::IndexUnavailable => "index-unavailable",
            Self::ClusterBlock => "cluster-block",
            Self::Overloaded => "overloaded",
            Self::ServerError => "server-error",
            Self::UnexpectedResponse => "unexpected-response",
        }
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failure of the pipeline rather than of a record: it feeds the breaker, never the DLQ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakerFailure {
    pub kind: FailureKind,
    pub message: String,
}

impl fmt::Display for BreakerFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

/// What to do after a whole bulk request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestDecision {
    /// The engine answered 2xx: classify each item.
    InspectItems,
    /// 413 for several items: send each half of the batch on its own.
    Split,
    /// 413 for a single item: that document alone is bigger than the engine accepts
    /// (`http.max_content_length`), so no retry or split can ever succeed.
    DeadLetter { class: ErrorClass, message: String },
    /// The request failed as a whole: count it against the breaker; the items stay pending.
    BreakerFailure(BreakerFailure),
}

/// What to do with one item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemDecision {
    /// Written.
    Indexed,
    /// 409 version conflict: the index already holds this version or a newer one. With
    /// external versions that is the expected answer to a replay or an out-of-order event.
    AlreadyNewer,
    /// Transient; send it again after a backoff.
    Retry,
    /// Can never succeed as it is.
    DeadLetter { class: ErrorClass, message: String },
    /// Not this document's fault: the index or cluster cannot take writes at all.
    BreakerFailure(BreakerFailure),
}

const CLUSTER_BLOCK: &str = "cluster_block_exception";
const INDEX_NOT_FOUND: &str = "index_not_found_exception";
const INDEX_CLOSED: &str = "index_closed_exception";
const VERSION_CONFLICT: &str = "version_conflict_engine_exception";
/// The document itself does not fit the mapping; listed so their message says so plainly.
const MAPPING_ERRORS: [&str; 4] = [
    "mapper_parsing_exception",
    "strict_dynamic_mapping_exception",
    "document_parsing_exception",
    "illegal_argument_exception",
];
/// Both engines say this (with `illegal_argument_exception`, status 400) when the alias has no
/// write index; it is about the alias, not the document, so it must not dead-letter.
const NO_WRITE_INDEX: &str = "no write index is defined";

/// `"<status> <type>: <reason>"`, leaving out what the engine did not say.
fn describe(status: u16, error_type: Option<&str>, reason: Option<&str>) -> String {
    match (error_type, reason) {
        (Some(t), Some(r)) => format!("{status} {t}: {r}"),
        (Some(t), None) => format!("{status} {t}"),
        (None, Some(r)) => format!("{status}: {r}"),
        (None, None) => format!("status {status}"),
    }
}

fn breaker(kind: FailureKind, message: String) -> BreakerFailure {
    BreakerFailure { kind, message }
}

/// Decides what the outcome of a whole bulk request of `batch_len` items means.
pub fn classify_request(outcome: &RequestOutcome, batch_len: usize) -> RequestDecision {
    let (status, error_type, reason) = match outcome {
        RequestOutcome::Transport { message } => {
            return RequestDecision::BreakerFailure(breaker(
                FailureKind::Transport,
                message.clone(),
            ));
        }
        RequestOutcome::Timeout => {
            return RequestDecision::BreakerFailure(breaker(
                FailureKind::Timeout,
                "no response within the request timeout".to_owned(),
            ));
        }
        RequestOutcome::Response {
            status,
            error_type,
            reason,
        } => (*status, error_type.as_deref(), reason.as_deref()),
    };
    let message = describe(status, error_type, reason);
    let kind = match status {
        200..=299 => return RequestDecision::InspectItems,
        // A block comes as 403 or 429 depending on the block and the engine version; either way
        // no write can succeed until it is lifted.
        _ if error_type == Some(CLUSTER_BLOCK) => FailureKind::ClusterBlock,
        413 if batch_len > 1 => return RequestDecision::Split,
        413 => {
            return RequestDecision::DeadLetter {
                class: ErrorClass::MappingRejected,
                message: format!(
                    "document too large: the engine refused a bulk request holding only this \
                     document ({message}); it exceeds http.max_content_length"
                ),
            };
        }
        401 | 403 => FailureKind::AuthRejected,
        404 if error_type == Some(INDEX_NOT_FOUND) => FailureKind::IndexUnavailable,
        429 => FailureKind::Overloaded,
        500..=599 => FailureKind::ServerError,
        // Including 400: a body the engine cannot parse is our bug, not the records' fault, so
        // the batch waits for a fix instead of going to the DLQ.
        _ => FailureKind::UnexpectedResponse,
    };
    RequestDecision::BreakerFailure(breaker(kind, message))
}

/// Decides what to do with one item of a 2xx bulk response. `attempts` counts the attempts made
/// for this item so far, the one that produced `item` included; `max_attempts` is the retry
/// bound (attempts in total, so 1 never retries).
pub fn classify_item(item: &ItemResult, attempts: u32, max_attempts: u32) -> ItemDecision {
    let status = item.status;
    let error_type = item.error_type.as_deref();
    let reason = item.reason.as_deref();
    let message = || describe(status, error_type, reason);
    let pipeline = |kind| ItemDecision::BreakerFailure(breaker(kind, message()));
    let dead_letter = |class, message| ItemDecision::DeadLetter { class, message };
    match status {
        200..=299 => ItemDecision::Indexed,
        // Checked before the status ranges: these arrive with statuses (403, 429, 400, 404)
        // that would otherwise mean retry or dead-letter, yet they say the index cannot take
        // any write, and dead-lettering every record while it lasts would empty the topic into
        // the DLQ.
        _ if error_type == Some(CLUSTER_BLOCK) => pipeline(FailureKind::ClusterBlock),
        _ if error_type == Some(INDEX_NOT_FOUND) || error_type == Some(INDEX_CLOSED) => {
            pipeline(FailureKind::IndexUnavailable)
        }
        // An `index` action answers 404 only when its target index is missing.
        404 => pipeline(FailureKind::IndexUnavailable),
        400 if reason.is_some_and(|r| r.contains(NO_WRITE_INDEX)) => {
            pipeline(FailureKind::IndexUnavailable)
        }
        401 | 403 => pipeline(FailureKind::AuthRejected),
        409 if error_type == Some(VERSION_CONFLICT) => ItemDecision::AlreadyNewer,
        429 | 500..=599 if attempts < max_attempts => ItemDecision::Retry,
        429 | 500..=599 => dead_letter(
            ErrorClass::RetriesExhausted,
            format!("gave up after {attempts} attempts, last: {}", message()),
        ),
        _ if error_type.is_some_and(|t| MAPPING_ERRORS.contains(&t)) => {
            dead_letter(ErrorClass::MappingRejected, message())
        }
        // The engine refused this document for a reason we do not know: sending it again would
        // get the same answer, so it goes to the DLQ with the engine's words for a human.
        400..=499 => dead_letter(
            ErrorClass::MappingRejected,
            format!("unexpected item error {}", message()),
        ),
        // 1xx/3xx make no sense for an item: retry within the bound rather than lose or stall.
        _ if attempts < max_attempts => ItemDecision::Retry,
        _ => dead_letter(
            ErrorClass::RetriesExhausted,
            format!("gave up after {attempts} attempts, last: {}", message()),
        ),
    }
}

/// An item that goes to the DLQ, with its `dlq-error-class`, `dlq-error-message` and
/// `dlq-attempts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter<T> {
    pub item: T,
    pub class: ErrorClass,
    pub message: String,
    pub attempts: u32,
}

/// The items of a batch sorted by what happens to them next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partitioned<T> {
    /// Durable in the index (written, or already newer there): their offsets may be committed.
    pub done: Vec<T>,
    /// How many of `done` were version conflicts, for the metric.
    pub already_newer: usize,
    /// To be sent again after a backoff, with the attempt count raised.
    pub retry: Vec<T>,
    /// To be written to the DLQ (awaited) before their offsets are committed.
    pub dead_letter: Vec<DeadLetter<T>>,
    /// Blocked by a failure of the pipeline: neither retried against the bound nor
    /// dead-lettered; they wait, uncommitted, until the breaker lets requests through again.
    pub breaker: Vec<(T, BreakerFailure)>,
}

impl<T> Default for Partitioned<T> {
    fn default() -> Self {
        Self {
            done: Vec::new(),
            already_newer: 0,
            retry: Vec::new(),
            dead_letter: Vec::new(),
            breaker: Vec::new(),
        }
    }
}

impl<T> Partitioned<T> {
    /// What this response means for the breaker: the first pipeline failure among the items,
    /// or `None` when the request counts as a success. One per batch, so a batch of a thousand
    /// items on a missing index is one failure, not a thousand.
    pub fn breaker_failure(&self) -> Option<&BreakerFailure> {
        self.breaker.first().map(|(_, failure)| failure)
    }
}

/// Classifies every item of a 2xx response and sorts them; each input is the item, the
/// attempts made for it so far (this one included) and its result.
pub fn partition<T>(
    items: impl IntoIterator<Item = (T, u32, ItemResult)>,
    max_attempts: u32,
) -> Partitioned<T> {
    let mut out = Partitioned::default();
    for (item, attempts, result) in items {
        match classify_item(&result, attempts, max_attempts) {
            ItemDecision::Indexed => out.done.push(item),
            ItemDecision::AlreadyNewer => {
                out.already_newer += 1;
                out.done.push(item);
            }
            ItemDecision::Retry => out.retry.push(item),
            ItemDecision::DeadLetter { class, message } => out.dead_letter.push(DeadLetter {
                item,
                class,
                message,
                attempts,
            }),
            ItemDecision::BreakerFailure(failure) => out.breaker.push((item, failure)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(status: u16, error_type: Option<&str>, reason: Option<&str>) -> RequestOutcome {
        RequestOutcome::Response {
            status,
            error_type: error_type.map(str::to_owned),
            reason: reason.map(str::to_owned),
        }
    }

    /// The decision reduced to something a table can spell: `inspect`, `split`, `dlq:<class>`
    /// or `breaker:<kind>`.
    fn request_label(d: &RequestDecision) -> String {
        match d {
            RequestDecision::InspectItems => "inspect".into(),
            RequestDecision::Split => "split".into(),
            RequestDecision::DeadLetter { class, .. } => format!("dlq:{class}"),
            RequestDecision::BreakerFailure(f) => format!("breaker:{}", f.kind),
        }
    }

    #[test]
    fn whole_request_outcomes() {
        let block = "index [messages-000001] blocked by: [TOO_MANY_REQUESTS/12/disk usage exceeded flood-stage watermark, index has read-only-allow-delete block];";
        let cases: Vec<(RequestOutcome, usize, &str)> = vec![
            (
                RequestOutcome::Transport {
                    message: "connection refused".into(),
                },
                10,
                "breaker:transport",
            ),
            (RequestOutcome::Timeout, 10, "breaker:timeout"),
            (response(200, None, None), 10, "inspect"),
            (response(201, None, None), 1, "inspect"),
            (
                response(500, Some("null_pointer_exception"), None),
                10,
                "breaker:server-error",
            ),
            (
                response(502, None, Some("Bad Gateway")),
                10,
                "breaker:server-error",
            ),
            (response(503, None, None), 10, "breaker:server-error"),
            (
                response(429, Some("es_rejected_execution_exception"), None),
                10,
                "breaker:overloaded",
            ),
            (
                response(401, Some("security_exception"), None),
                10,
                "breaker:auth-rejected",
            ),
            (
                response(403, Some("security_exception"), None),
                10,
                "breaker:auth-rejected",
            ),
            (
                response(
                    404,
                    Some("index_not_found_exception"),
                    Some("no such index [messages]"),
                ),
                10,
                "breaker:index-unavailable",
            ),
            (response(404, None, None), 10, "breaker:unexpected-response"),
            (
                response(403, Some("cluster_block_exception"), Some(block)),
                10,
                "breaker:cluster-block",
            ),
            (
                response(429, Some("cluster_block_exception"), Some(block)),
                10,
                "breaker:cluster-block",
            ),
            (response(413, None, None), 10, "split"),
            (response(413, None, None), 2, "split"),
            (response(413, None, None), 1, "dlq:mapping-rejected"),
            (
                response(
                    400,
                    Some("illegal_argument_exception"),
                    Some("Malformed action/metadata line [1]"),
                ),
                10,
                "breaker:unexpected-response",
            ),
            (response(302, None, None), 10, "breaker:unexpected-response"),
        ];
        for (outcome, batch_len, expected) in cases {
            let got = classify_request(&outcome, batch_len);
            assert_eq!(
                request_label(&got),
                expected,
                "{outcome:?} with {batch_len} items"
            );
        }
    }

    #[test]
    fn a_single_document_too_large_says_so() {
        let RequestDecision::DeadLetter { class, message } =
            classify_request(&response(413, None, Some("Request Entity Too Large")), 1)
        else {
            panic!("not dead-lettered")
        };
        assert_eq!(class, ErrorClass::MappingRejected);
        assert_eq!(
            message,
            "document too large: the engine refused a bulk request holding only this document \
             (413: Request Entity Too Large); it exceeds http.max_content_length"
        );
    }

    #[test]
    fn breaker_failures_carry_the_engines_words() {
        let RequestDecision::BreakerFailure(f) = classify_request(
            &response(
                503,
                Some("unavailable_shards_exception"),
                Some("primary shard is not active"),
            ),
            3,
        ) else {
            panic!()
        };
        assert_eq!(
            f.to_string(),
            "server-error: 503 unavailable_shards_exception: primary shard is not active"
        );
    }

    fn item_label(d: &ItemDecision) -> String {
        match d {
            ItemDecision::Indexed => "indexed".into(),
            ItemDecision::AlreadyNewer => "already-newer".into(),
            ItemDecision::Retry => "retry".into(),
            ItemDecision::DeadLetter { class, .. } => format!("dlq:{class}"),
            ItemDecision::BreakerFailure(f) => format!("breaker:{}", f.kind),
        }
    }

    #[test]
    fn item_outcomes() {
        const MAX: u32 = 3;
        let e = ItemResult::error;
        let cases: Vec<(ItemResult, u32, &str)> = vec![
            (ItemResult::ok(201), 1, "indexed"),
            (ItemResult::ok(200), 3, "indexed"),
            (
                e(
                    409,
                    "version_conflict_engine_exception",
                    "[m1]: version conflict, current version [5] is higher or equal to the one provided [3]",
                ),
                1,
                "already-newer",
            ),
            (
                e(409, "some_other_conflict", "?"),
                1,
                "dlq:mapping-rejected",
            ),
            (
                e(429, "es_rejected_execution_exception", "rejected execution"),
                1,
                "retry",
            ),
            (
                e(429, "es_rejected_execution_exception", "rejected execution"),
                2,
                "retry",
            ),
            (
                e(429, "es_rejected_execution_exception", "rejected execution"),
                3,
                "dlq:retries-exhausted",
            ),
            (
                e(429, "circuit_breaking_exception", "[parent] Data too large"),
                1,
                "retry",
            ),
            (e(500, "exception", "boom"), 1, "retry"),
            (
                e(
                    503,
                    "unavailable_shards_exception",
                    "primary shard is not active",
                ),
                2,
                "retry",
            ),
            (
                e(
                    503,
                    "unavailable_shards_exception",
                    "primary shard is not active",
                ),
                4,
                "dlq:retries-exhausted",
            ),
            (
                e(
                    400,
                    "mapper_parsing_exception",
                    "failed to parse field [timestamp]",
                ),
                1,
                "dlq:mapping-rejected",
            ),
            (
                e(
                    400,
                    "strict_dynamic_mapping_exception",
                    "mapping set to strict, dynamic introduction of [x] within [_doc] is not allowed",
                ),
                1,
                "dlq:mapping-rejected",
            ),
            (
                e(400, "document_parsing_exception", "[1:2] failed to parse"),
                1,
                "dlq:mapping-rejected",
            ),
            (
                e(
                    400,
                    "illegal_argument_exception",
                    "Limit of total fields [1000] has been exceeded",
                ),
                1,
                "dlq:mapping-rejected",
            ),
            (
                e(400, "action_request_validation_exception", "something new"),
                1,
                "dlq:mapping-rejected",
            ),
            (e(422, "unprocessable", "?"), 1, "dlq:mapping-rejected"),
            (
                e(404, "index_not_found_exception", "no such index [messages]"),
                1,
                "breaker:index-unavailable",
            ),
            (
                ItemResult {
                    status: 404,
                    error_type: None,
                    reason: None,
                },
                1,
                "breaker:index-unavailable",
            ),
            (
                e(400, "index_closed_exception", "closed"),
                1,
                "breaker:index-unavailable",
            ),
            (
                e(
                    400,
                    "illegal_argument_exception",
                    "no write index is defined for alias [messages]. The write index may be explicitly disabled using is_write_index=false or the alias points to multiple indices without one being designated as a write index",
                ),
                1,
                "breaker:index-unavailable",
            ),
            (
                e(
                    403,
                    "cluster_block_exception",
                    "index [messages-000001] blocked by: [FORBIDDEN/8/index write (api)];",
                ),
                1,
                "breaker:cluster-block",
            ),
            (
                e(
                    429,
                    "cluster_block_exception",
                    "blocked by: [TOO_MANY_REQUESTS/12/disk usage exceeded flood-stage watermark",
                ),
                3,
                "breaker:cluster-block",
            ),
            (
                e(
                    403,
                    "security_exception",
                    "action [indices:data/write/bulk[s]] is unauthorized",
                ),
                1,
                "breaker:auth-rejected",
            ),
            (ItemResult::ok(302), 1, "retry"),
            (ItemResult::ok(302), 3, "dlq:retries-exhausted"),
        ];
        for (item, attempts, expected) in cases {
            let got = classify_item(&item, attempts, MAX);
            assert_eq!(item_label(&got), expected, "{item:?} at attempt {attempts}");
        }
    }

    #[test]
    fn item_dlq_messages() {
        let cases: Vec<(ItemResult, u32, &str)> = vec![
            (
                ItemResult::error(
                    400,
                    "mapper_parsing_exception",
                    "failed to parse field [timestamp]",
                ),
                1,
                "400 mapper_parsing_exception: failed to parse field [timestamp]",
            ),
            (
                ItemResult::error(418, "teapot_exception", "short and stout"),
                1,
                "unexpected item error 418 teapot_exception: short and stout",
            ),
            (
                ItemResult::error(429, "es_rejected_execution_exception", "queue full"),
                3,
                "gave up after 3 attempts, last: 429 es_rejected_execution_exception: queue full",
            ),
            (
                ItemResult {
                    status: 400,
                    error_type: None,
                    reason: None,
                },
                1,
                "unexpected item error status 400",
            ),
        ];
        for (item, attempts, expected) in cases {
            let ItemDecision::DeadLetter { message, .. } = classify_item(&item, attempts, 3) else {
                panic!("{item:?} not dead-lettered")
            };
            assert_eq!(message, expected);
        }
    }

    #[test]
    fn a_mixed_batch_retries_only_what_can_succeed() {
        let e = ItemResult::error;
        let batch = vec![
            ("created", 1, ItemResult::ok(201)),
            (
                "replayed",
                1,
                e(
                    409,
                    "version_conflict_engine_exception",
                    "current version [4] is higher",
                ),
            ),
            (
                "rejected-once",
                1,
                e(429, "es_rejected_execution_exception", "queue full"),
            ),
            (
                "bad-mapping",
                1,
                e(
                    400,
                    "mapper_parsing_exception",
                    "failed to parse field [timestamp]",
                ),
            ),
            (
                "shard-down",
                2,
                e(
                    503,
                    "unavailable_shards_exception",
                    "primary shard is not active",
                ),
            ),
            (
                "rejected-too-often",
                3,
                e(429, "es_rejected_execution_exception", "queue full"),
            ),
            ("updated", 2, ItemResult::ok(200)),
        ];
        let p = partition(batch, 3);
        assert_eq!(p.done, ["created", "replayed", "updated"]);
        assert_eq!(p.already_newer, 1);
        assert_eq!(p.retry, ["rejected-once", "shard-down"]);
        let dead: Vec<_> = p
            .dead_letter
            .iter()
            .map(|d| (d.item, d.class, d.attempts))
            .collect();
        assert_eq!(
            dead,
            [
                ("bad-mapping", ErrorClass::MappingRejected, 1),
                ("rejected-too-often", ErrorClass::RetriesExhausted, 3),
            ]
        );
        assert!(p.breaker.is_empty());
        assert_eq!(p.breaker_failure(), None);
    }

    #[test]
    fn a_batch_hitting_a_missing_index_is_one_breaker_failure_and_no_dlq() {
        let e = ItemResult::error;
        let batch = vec![
            ("a", 1, ItemResult::ok(201)),
            (
                "b",
                1,
                e(404, "index_not_found_exception", "no such index [messages]"),
            ),
            (
                "c",
                3,
                e(404, "index_not_found_exception", "no such index [messages]"),
            ),
        ];
        let p = partition(batch, 3);
        assert_eq!(p.done, ["a"]);
        assert!(p.retry.is_empty() && p.dead_letter.is_empty());
        let blocked: Vec<_> = p.breaker.iter().map(|(item, _)| *item).collect();
        assert_eq!(blocked, ["b", "c"]);
        assert_eq!(
            p.breaker_failure().map(|f| f.kind),
            Some(FailureKind::IndexUnavailable)
        );
    }
}

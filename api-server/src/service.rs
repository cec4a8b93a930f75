//! The message service: what create, read, update, delete and list mean, on top of the
//! repository and the outbox.
//!
//! Owns the rules of a change: versions (1 at creation, +1 per accepted change), `If-Match`,
//! idempotent creates, tombstones, and the per-id serialization of writes in this process
//! (FerretDB 1.x does not make read-modify-write atomic; ARCHITECTURE.md, MongoDB). Every write
//! takes an outbox ticket before it stamps the time, and settles it with what MongoDB answered,
//! so the relay can never skip an acknowledged change.
//!
//! **A write belongs to no request.** Each create, update and delete runs as a task of its own
//! that the request only waits for: a client that hangs up, times out or retries drops its
//! request, never the write, its per-id lock or its ticket, so the ticket is settled with what
//! MongoDB really answered (ARCHITECTURE.md, Relay: "the obligation to publish belongs to the
//! write"). A stop waits for these tasks ([`Messages::finish_writes`]) before the relay drains.
//!
//! It knows nothing of HTTP beyond answering with [`Problem`]s; handlers parse and render.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use mongodb::error::ErrorKind;
use pipeline_contract::telemetry;
use pipeline_contract::time::Timestamp;
use serde_json::{Map, Value};
use tokio::sync::{Mutex, MutexGuard};
use tokio_util::task::TaskTracker;
use tracing::Instrument;
use uuid::Uuid;

use crate::etag::IfMatch;
use crate::group_commit::{GroupCommit, Outcome};
use crate::idempotency::{IdempotencyKey, request_fingerprint};
use crate::outbox::{Outbox, Unvouched};
use crate::problem::{FieldError, Problem};
use crate::search::SearchClient;
use crate::store::{
    After, Change, Message, MessageView, Store, StoreError, StoredMessage, to_bson,
};
use crate::validate::{MessagePatch, NewMessage};

/// Lock stripes: writes to ids in the same stripe wait for each other, nothing else does.
const STRIPES: usize = 1024;
/// Attempts of an unconditional PATCH/DELETE that lost a race to another process.
const ATTEMPTS: usize = 3;

/// How a create was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    /// A new message.
    New,
    /// A retry with the same `Idempotency-Key` and body: the original message.
    Replayed,
}

/// One conversation page.
#[derive(Debug, Clone)]
pub struct Page {
    pub items: Vec<Message>,
    pub next: Option<After>,
}

/// The message service; cheap to clone (its state is shared).
#[derive(Debug, Clone)]
pub struct Messages {
    inner: Arc<Writer>,
    /// The write tasks under way (see the module documentation).
    writes: TaskTracker,
}

/// What the write tasks share.
#[derive(Debug)]
struct Writer {
    store: Store,
    inserts: GroupCommit,
    outbox: Arc<Outbox>,
    stripes: Vec<Mutex<()>>,
}

/// MongoDB server error codes that refuse the data of a write rather than the write: BadValue,
/// FailedToParse, InvalidBSON, BSONObjectTooLarge. Validation is meant to refuse all such data
/// first; if the server still refuses it, the client's data is the cause, so it is a 422.
const DATA_REFUSED: [i32; 4] = [2, 9, 22, 10334];

/// The server error code of a write or command failure.
fn server_code(error: &mongodb::error::Error) -> Option<i32> {
    use mongodb::error::WriteFailure;
    match error.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(e)) => Some(e.code),
        ErrorKind::Command(e) => Some(e.code),
        _ => None,
    }
}

/// The answer to a failed write of the client's data: 422 when the server refused the data
/// itself ([`DATA_REFUSED`]), [`store_problem`] otherwise.
pub fn write_problem(error: StoreError) -> Problem {
    if let StoreError::Mongo(e) = &error
        && let Some(code) = server_code(e).filter(|c| DATA_REFUSED.contains(c))
    {
        return refused_problem(code, &error);
    }
    store_problem(error)
}

/// The answer to a document MongoDB refused (server error `code`, nothing written): 422 when it
/// refused the data itself ([`DATA_REFUSED`]), a 500 otherwise (a bug of ours or the server's).
fn refused_problem(code: i32, error: &dyn std::fmt::Display) -> Problem {
    if DATA_REFUSED.contains(&code) {
        tracing::warn!(%error, "MongoDB refused the data of a write");
        Problem::validation(vec![FieldError::new(
            "",
            format!("the message store refused this data (MongoDB error code {code})"),
        )])
    } else {
        tracing::error!(%error, code, "MongoDB refused a write");
        Problem::internal()
    }
}

/// A repository failure as the client sees it; the cause goes to the log, not the body.
pub fn store_problem(error: StoreError) -> Problem {
    let unreachable = matches!(
        &error,
        StoreError::Mongo(e) if matches!(e.kind.as_ref(), ErrorKind::ServerSelection { .. } | ErrorKind::Io(_) | ErrorKind::ConnectionPoolCleared { .. })
    );
    if unreachable {
        tracing::warn!(%error, "MongoDB unreachable");
        Problem::unavailable("the message store is unreachable; retry later")
    } else {
        tracing::error!(%error, "MongoDB operation failed");
        Problem::internal()
    }
}

fn unvouched(error: Unvouched) -> Problem {
    tracing::warn!(%error, "write refused");
    Problem::unavailable(error.to_string())
}

/// The `traceparent` of the request this write serves, when traced (its task runs in the
/// request's span).
fn origin() -> Option<String> {
    telemetry::traceparent(&tracing::Span::current())
}

fn not_found(id: Uuid) -> Problem {
    Problem::not_found(format!("no message {id}"))
}

impl Messages {
    pub fn new(store: Store, inserts: GroupCommit, outbox: Arc<Outbox>) -> Self {
        Self {
            inner: Arc::new(Writer {
                store,
                inserts,
                outbox,
                stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            }),
            writes: TaskTracker::new(),
        }
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// Whether writes are taken (the relay vouches for this process's registration).
    pub fn accepts_writes(&self) -> bool {
        self.inner.outbox.is_vouched(std::time::Instant::now())
    }

    /// Runs `work` as a task of its own, in the caller's span, and waits for its answer; the
    /// task goes on if the caller stops waiting.
    async fn detached<T: Send + 'static>(
        &self,
        work: impl Future<Output = Result<T, Problem>> + Send + 'static,
    ) -> Result<T, Problem> {
        let task = self.writes.spawn(work.in_current_span());
        task.await.unwrap_or_else(|error| {
            tracing::error!(%error, "a write task failed");
            Err(Problem::internal())
        })
    }

    /// Stops taking writes and waits, at most `within`, for those under way; `false` when some
    /// are still running (their tickets hold the watermark that the relay persists).
    pub async fn finish_writes(&self, within: Duration) -> bool {
        self.writes.close();
        tokio::time::timeout(within, self.writes.wait())
            .await
            .is_ok()
    }

    /// Creates a message; with an idempotency key, a retry gets the original.
    pub async fn create(
        &self,
        tenant: &str,
        new: NewMessage,
        key: Option<&IdempotencyKey>,
        correlation_id: &str,
    ) -> Result<(Message, Created), Problem> {
        let (writer, tenant, key) = (Arc::clone(&self.inner), tenant.to_owned(), key.cloned());
        let correlation_id = correlation_id.to_owned();
        self.detached(async move {
            writer
                .create(&tenant, new, key.as_ref(), &correlation_id)
                .await
        })
        .await
    }

    /// The tenant's live message.
    pub async fn get(&self, tenant: &str, id: Uuid) -> Result<Message, Problem> {
        let doc = self
            .inner
            .store
            .get(tenant, &id.to_string())
            .await
            .map_err(store_problem)?;
        match doc {
            Some(doc) if !doc.deleted => doc.to_message().map_err(|e| store_problem(e.into())),
            _ => Err(not_found(id)),
        }
    }

    /// Applies a patch (content and/or metadata); `If-Match` must name the current version.
    pub async fn update(
        &self,
        tenant: &str,
        id: Uuid,
        patch: MessagePatch,
        if_match: Option<&IfMatch>,
        correlation_id: &str,
    ) -> Result<Message, Problem> {
        let (writer, tenant, if_match) = (
            Arc::clone(&self.inner),
            tenant.to_owned(),
            if_match.cloned(),
        );
        let correlation_id = correlation_id.to_owned();
        self.detached(async move {
            writer
                .update(&tenant, id, patch, if_match.as_ref(), &correlation_id)
                .await
        })
        .await
    }

    /// Deletes a message: it becomes a hidden tombstone until the purge.
    pub async fn delete(
        &self,
        tenant: &str,
        id: Uuid,
        if_match: Option<&IfMatch>,
        correlation_id: &str,
    ) -> Result<(), Problem> {
        let (writer, tenant, if_match) = (
            Arc::clone(&self.inner),
            tenant.to_owned(),
            if_match.cloned(),
        );
        let correlation_id = correlation_id.to_owned();
        self.detached(async move {
            writer
                .change(&tenant, id, if_match.as_ref(), &correlation_id, |_| {
                    Change::Delete
                })
                .await
                .map(drop)
        })
        .await
    }

    /// A page of a conversation's live messages, newest first.
    pub async fn conversation(
        &self,
        tenant: &str,
        conversation: Uuid,
        after: Option<&After>,
        limit: usize,
    ) -> Result<Page, Problem> {
        let want = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut docs = self
            .inner
            .store
            .conversation_page(tenant, &conversation.to_string(), after, want + 1)
            .await
            .map_err(store_problem)?;
        let more = docs.len() > limit;
        docs.truncate(limit);
        let next = more.then(|| docs.last()).flatten().map(|d| After {
            millis: d.timestamp.timestamp_millis(),
            id: d.id.clone(),
        });
        let items = docs
            .iter()
            .map(StoredMessage::to_message)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| store_problem(e.into()))?;
        Ok(Page { items, next })
    }

    /// Removes tombstones deleted before `deleted_before` whose delete is on Kafka (older than
    /// every replica's watermark, this process's included) and that the index has not held for
    /// at least `index_grace`.
    ///
    /// The index keeps its own tombstone of a message until the indexer purges it, and the
    /// engine then remembers the deleted version for a while (`index.gc_deletes`, 60 s by
    /// default). A tombstone gone from MongoDB before either would hide the next life of its id:
    /// an `Idempotency-Key` used again makes the same id at version 1, which the older version
    /// outranks, and the new message would never be searchable. So a purge that finds the index
    /// without a tombstone notes the time on it, and a later purge, `index_grace` after, removes
    /// it; without a search engine to ask, none goes.
    pub async fn purge(
        &self,
        deleted_before: Timestamp,
        search: Option<&SearchClient>,
        index_grace: Duration,
    ) -> Result<Purged, StoreError> {
        let Some(search) = search else {
            return Ok(Purged::default());
        };
        let own = self.inner.outbox.snapshot().watermark;
        let store = &self.inner.store;
        let lowest = store.lowest_watermark().await?.map_or(own, |w| w.min(own));
        let published_before = Timestamp::from_millis(lowest)
            .unwrap_or_else(|| Timestamp::from_millis(0).expect("epoch"));
        let now = Timestamp::now();
        let grace = i64::try_from(index_grace.as_millis()).unwrap_or(i64::MAX);
        let mut purged = Purged::default();
        let mut after = String::new();
        loop {
            let page = store
                .purgeable(deleted_before, published_before, &after, PURGE_PAGE)
                .await?;
            let Some((last, _)) = page.last().cloned() else {
                return Ok(purged);
            };
            let ids: Vec<String> = page.iter().map(|(id, _)| id.clone()).collect();
            let held = match search.held(&ids).await {
                Ok(held) => held,
                Err(error) => {
                    tracing::warn!(%error, "asking the index which tombstones it holds; purging none");
                    return Ok(purged);
                }
            };
            let (mut due, mut newly_gone) = (Vec::new(), Vec::new());
            for (id, gone_at) in &page {
                match gone_at {
                    _ if held.contains(id) => purged.kept += 1,
                    Some(at) if now.timestamp_millis() - at >= grace => due.push(id.clone()),
                    Some(_) => purged.kept += 1,
                    None => {
                        newly_gone.push(id.clone());
                        purged.kept += 1;
                    }
                }
            }
            if !newly_gone.is_empty() {
                store.note_index_gone(&newly_gone, now).await?;
            }
            if !due.is_empty() {
                purged.purged += store
                    .purge_tombstones(&due, deleted_before, published_before)
                    .await?;
            }
            if page.len() < usize::try_from(PURGE_PAGE).unwrap_or(usize::MAX) {
                return Ok(purged);
            }
            after = last;
        }
    }
}

/// Tombstones looked at per page of a purge.
const PURGE_PAGE: i64 = 1000;

/// What a purge did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Purged {
    pub purged: u64,
    /// Past the horizon, kept because the index still holds them, or held them too recently.
    pub kept: u64,
}

impl Writer {
    async fn lock(&self, id: Uuid) -> MutexGuard<'_, ()> {
        let (hi, lo) = id.as_u64_pair();
        let stripe = usize::try_from((hi ^ lo) % STRIPES as u64).unwrap_or(0);
        self.stripes[stripe].lock().await
    }

    async fn create(
        &self,
        tenant: &str,
        new: NewMessage,
        key: Option<&IdempotencyKey>,
        correlation_id: &str,
    ) -> Result<(Message, Created), Problem> {
        let fingerprint = key.map(|_| request_fingerprint(&new).to_string());
        let id = key.map_or_else(Uuid::new_v4, |k| k.message_id(tenant));
        let _guard = self.lock(id).await;
        let ticket = self.outbox.begin().map_err(unvouched)?;
        let now = to_bson(ticket.stamp());
        let doc = StoredMessage {
            id: id.to_string(),
            tenant_id: tenant.to_owned(),
            conversation_id: new.conversation_id.to_string(),
            sender_id: Some(new.sender_id.to_string()),
            content: Some(new.content),
            metadata_json: Some(Value::Object(new.metadata).to_string()),
            timestamp: now,
            updated_at: now,
            version: 1,
            deleted: false,
            deleted_at: None,
            fingerprint: fingerprint.clone(),
            correlation_id: correlation_id.to_owned(),
        };
        let committed = self.inserts.insert(doc).await.map_err(|stopped| {
            tracing::warn!(%stopped, "create refused");
            Problem::unavailable("the server is stopping; retry")
        })?;
        let doc = committed.doc;
        match committed.outcome {
            Outcome::Inserted => {
                self.outbox.committed(ticket, &doc, origin());
                let message = doc.to_message().map_err(|e| store_problem(e.into()))?;
                return Ok((message, Created::New));
            }
            Outcome::Duplicate => ticket.not_written(),
            Outcome::Refused { code, message } => {
                ticket.not_written();
                return Err(refused_problem(code, &message));
            }
            // An insert that failed may still have been applied: the ticket's drop puts it in
            // doubt, and the relay looks for it once it settles (see `outbox::Ticket`).
            Outcome::Failed(error) => return Err(write_problem(error.into())),
        }
        let existing = self
            .store
            .get(tenant, &doc.id)
            .await
            .map_err(store_problem)?;
        match existing {
            Some(e) if e.deleted => Err(Problem::conflict(
                "the message created with this Idempotency-Key has since been deleted",
            )),
            Some(e) if e.fingerprint.is_some() && e.fingerprint == fingerprint => {
                let message = e.to_message().map_err(|e| store_problem(e.into()))?;
                Ok((message, Created::Replayed))
            }
            Some(_) => Err(Problem::idempotency_key_reused()),
            // The id is UUIDv5(tenant, key), or random: another tenant cannot hold it.
            None => Err(Problem::conflict("the message id is taken")),
        }
    }

    async fn update(
        &self,
        tenant: &str,
        id: Uuid,
        patch: MessagePatch,
        if_match: Option<&IfMatch>,
        correlation_id: &str,
    ) -> Result<Message, Problem> {
        let metadata = patch.metadata.map(|m| Value::Object(m).to_string());
        let doc = self
            .change(tenant, id, if_match, correlation_id, |current| {
                Change::Update {
                    content: patch
                        .content
                        .clone()
                        .or_else(|| current.content.clone())
                        .unwrap_or_default(),
                    metadata_json: metadata
                        .clone()
                        .or_else(|| current.metadata_json.clone())
                        .unwrap_or_else(|| Value::Object(Map::new()).to_string()),
                }
            })
            .await?;
        doc.to_message().map_err(|e| store_problem(e.into()))
    }

    async fn change(
        &self,
        tenant: &str,
        id: Uuid,
        if_match: Option<&IfMatch>,
        correlation_id: &str,
        make: impl Fn(&StoredMessage) -> Change,
    ) -> Result<StoredMessage, Problem> {
        let _guard = self.lock(id).await;
        let key = id.to_string();
        for _ in 0..ATTEMPTS {
            let current = match self.store.get(tenant, &key).await.map_err(store_problem)? {
                Some(doc) if !doc.deleted => doc,
                _ => return Err(not_found(id)),
            };
            if let Some(condition) = if_match
                && !condition.matches(current.version())
            {
                return Err(Problem::version_mismatch(current.version()));
            }
            let change = make(&current);
            let ticket = self.outbox.begin().map_err(unvouched)?;
            let at = ticket.stamp();
            let applied = self
                .store
                .apply(tenant, &key, current.version(), &change, at, correlation_id)
                .await
                .map_err(write_problem)?;
            if applied {
                let next = changed(current, &change, at, correlation_id);
                self.outbox.committed(ticket, &next, origin());
                return Ok(next);
            }
            // Another process changed it between our read and write: with `If-Match` the
            // client's version is stale by definition; without, try again on the new state.
            ticket.not_written();
            if if_match.is_some() {
                let now = self.store.get(tenant, &key).await.map_err(store_problem)?;
                return match now {
                    Some(doc) if !doc.deleted => Err(Problem::version_mismatch(doc.version())),
                    _ => Err(not_found(id)),
                };
            }
        }
        Err(Problem::conflict(
            "the message kept changing under this request; retry",
        ))
    }
}

/// The document after `change` was applied to `current` (what MongoDB now holds).
fn changed(
    mut doc: StoredMessage,
    change: &Change,
    at: Timestamp,
    correlation_id: &str,
) -> StoredMessage {
    doc.version += 1;
    doc.updated_at = to_bson(at);
    correlation_id.clone_into(&mut doc.correlation_id);
    match change {
        Change::Update {
            content,
            metadata_json,
        } => {
            doc.content = Some(content.clone());
            doc.metadata_json = Some(metadata_json.clone());
        }
        Change::Delete => {
            doc.deleted = true;
            doc.deleted_at = Some(to_bson(at));
            (
                doc.content,
                doc.metadata_json,
                doc.sender_id,
                doc.fingerprint,
            ) = (None, None, None, None);
        }
    }
    doc
}

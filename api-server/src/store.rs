//! The MongoDB repository: message documents, their conditional writes, and the relay's
//! registrations (one per api-server process: watermark and heartbeat, see `replicas`).
//!
//! Owns every query, and the indexes they need. Every write is one
//! document operation (creates are grouped into one `insert_many` by `group_commit`); updates are conditional on `{_id, tenantId, version}` so that a stale
//! writer matches nothing (MongoDB makes that atomic; FerretDB 1.x does not, which is why the
//! service also serializes writes per id in-process). Every read filters by `tenantId`: a foreign
//! tenant's message is indistinguishable from a missing one.
//!
//! It decides nothing about HTTP, versions or events: the service computes the new state, the
//! relay turns documents into events.
//!
//! The document's shape, its event and the conversions of its times are the contract's
//! (`pipeline_contract::document`), which the indexer's audit and rebuild read too; the API's view
//! of a live message ([`Message`]) is this crate's.

use std::time::Duration;

use futures::TryStreamExt;
use mongodb::bson::{self, DateTime, Document, doc};
use mongodb::error::ErrorKind;
use mongodb::options::IndexOptions;
use mongodb::{Client, Collection, IndexModel};
use pipeline_contract::access::Refused;
pub use pipeline_contract::document::{
    CorruptDocument, StoredMessage, document_of, endpoint, to_bson, to_timestamp,
};
use pipeline_contract::document::{WATERMARK, relay_state_collection};
use pipeline_contract::mongodb_client::{self, MongoArgs};
use pipeline_contract::time::Timestamp;
use serde::Serialize;
use serde_json::{Map, Value};
use uuid::Uuid;

use prometheus_client::metrics::histogram::Histogram;

use crate::group_commit::GroupCommit;
use crate::replicas::{Pulse, Registration};

/// A live message as the API returns it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Message {
    pub id: Uuid,
    pub conversation_id: Uuid,
    pub sender_id: Uuid,
    pub content: String,
    /// Creation time (RFC 3339, UTC, milliseconds).
    #[schema(value_type = String, format = DateTime)]
    pub timestamp: Timestamp,
    /// Time of the latest accepted update; absent until the first one.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub updated_at: Option<Timestamp>,
    #[schema(value_type = Object)]
    pub metadata: Map<String, Value>,
    /// 1 at creation, +1 on every accepted change; also the `ETag`.
    pub version: u64,
}

/// Why a repository operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("MongoDB: {0}")]
    Mongo(#[from] mongodb::error::Error),
    #[error(transparent)]
    Corrupt(#[from] CorruptDocument),
}

impl StoreError {
    /// The refusal this is (credentials, CA, permissions), by the server at `endpoint`.
    pub fn refusal(&self, endpoint: &str) -> Option<Refused> {
        match self {
            Self::Mongo(error) => mongodb_client::refusal(error, endpoint),
            Self::Corrupt(_) => None,
        }
    }
}

/// The API's view of a stored document.
pub trait MessageView {
    /// The API view of a live message.
    fn to_message(&self) -> Result<Message, CorruptDocument>;
}

impl MessageView for StoredMessage {
    fn to_message(&self) -> Result<Message, CorruptDocument> {
        let (sender_id, content) = self.live_fields()?;
        Ok(Message {
            id: self.uuid("_id", &self.id)?,
            conversation_id: self.uuid("conversationId", &self.conversation_id)?,
            sender_id,
            content,
            timestamp: to_timestamp(self.timestamp),
            updated_at: self.last_update(),
            metadata: self.metadata()?,
            version: self.version(),
        })
    }
}

/// The fields a PATCH or DELETE sets, computed by the service.
#[derive(Debug, Clone)]
pub enum Change {
    Update {
        content: String,
        metadata_json: String,
    },
    Delete,
}

/// Where a conversation page or a relay scan continues: strictly after this (time, id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct After {
    pub millis: i64,
    pub id: String,
}

/// On a tombstone: when the purge first found the index without it (the index's own tombstone
/// purged); MongoDB's goes some time after, once the engine forgot the deleted version too.
const INDEX_GONE_AT: &str = "indexGoneAt";

/// Tombstones deleted before `deleted_before` and published (changed before `published_before`)
/// whose `_id` matches `ids`.
fn purgeable(deleted_before: Timestamp, published_before: Timestamp, ids: Document) -> Document {
    doc! {
        "_id": ids,
        "deleted": true,
        "deletedAt": {"$lt": to_bson(deleted_before)},
        "updatedAt": {"$lt": to_bson(published_before)},
    }
}

/// The repository: the messages collection and the relay's state collection.
#[derive(Debug, Clone)]
pub struct Store {
    messages: Collection<StoredMessage>,
    relay_state: Collection<Document>,
    db: mongodb::Database,
}

impl Store {
    /// A store on the server `mongodb` names (over TLS trusting its CA file when one is given).
    pub async fn connect(mongodb: &MongoArgs) -> Result<Self, StoreError> {
        let client = mongodb.client().await?;
        Ok(Self::new(
            &client,
            &mongodb.mongodb_database,
            &mongodb.mongodb_collection,
        ))
    }

    /// [`Store::connect`] and [`Store::ensure_indexes`]: what a process does before it serves.
    ///
    /// Replicas starting together on a new database (a pipeline's first rollout) all find the
    /// indexes missing and all create them; on FerretDB 1.24 every one but the first then asks for
    /// an index that exists, and the server drops its connection. So an attempt whose connection
    /// dropped looks again (the indexes are then listed, and nothing is asked) a few times before
    /// the error stands; any other error, a refusal (credentials, TLS, permissions) included,
    /// stands at once.
    pub async fn open(mongodb: &MongoArgs) -> Result<Self, StoreError> {
        const ATTEMPTS: u32 = 5;
        let store = Self::connect(mongodb).await?;
        let mut attempt = 1;
        loop {
            match store.ensure_indexes().await {
                Ok(()) => return Ok(store),
                // Only a dropped connection: any other error (an unreachable server after the
                // driver's own server selection, a bad request) stands at once.
                Err(StoreError::Mongo(error))
                    if attempt < ATTEMPTS
                        && matches!(error.kind.as_ref(), ErrorKind::Io(_))
                        && mongodb_client::refusal(&error, &mongodb.endpoint()).is_none() =>
                {
                    tracing::warn!(%error, attempt, "making the collection's indexes; looking again");
                    tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
                    attempt += 1;
                }
                Err(error) => return Err(error),
            }
        }
    }

    pub fn new(client: &Client, database: &str, collection: &str) -> Self {
        let db = client.database(database);
        Self {
            messages: db.collection(collection),
            relay_state: db.collection(&relay_state_collection(collection)),
            db,
        }
    }

    /// Creates the indexes every query here needs that are missing. Existing ones are left as
    /// they are: FerretDB 1.24 drops the connection when asked to create an index that exists.
    pub async fn ensure_indexes(&self) -> Result<(), StoreError> {
        let wanted = [
            (doc! {"updatedAt": 1, "_id": 1}, "relay_scan"),
            (
                doc! {"tenantId": 1, "conversationId": 1, "deleted": 1, "timestamp": -1, "_id": -1},
                "conversation_page",
            ),
            (doc! {"deleted": 1, "deletedAt": 1}, "tombstone_purge"),
        ];
        let existing = match self.messages.list_index_names().await {
            Ok(names) => names,
            // No collection yet: no indexes.
            Err(e) if matches!(e.kind.as_ref(), ErrorKind::Command(c) if c.code == 26) => vec![],
            Err(e) => return Err(e.into()),
        };
        let missing: Vec<IndexModel> = wanted
            .into_iter()
            .filter(|(_, name)| !existing.iter().any(|e| e == name))
            .map(|(keys, name)| {
                IndexModel::builder()
                    .keys(keys)
                    .options(IndexOptions::builder().name(name.to_owned()).build())
                    .build()
            })
            .collect();
        if !missing.is_empty() {
            self.messages.create_indexes(missing).await?;
        }
        Ok(())
    }

    /// One round trip to the server (`/ready`).
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.db.run_command(doc! {"ping": 1}).await?;
        Ok(())
    }

    /// The committer of creates on the messages collection (see `group_commit`).
    pub fn group_commit(
        &self,
        max_batch: usize,
        in_flight: usize,
        sizes: Histogram,
    ) -> GroupCommit {
        GroupCommit::start(self.messages.clone(), max_batch, in_flight, sizes)
    }

    /// The tenant's document with this id, tombstones included.
    #[tracing::instrument(
        name = "mongodb find",
        skip_all,
        fields(
            otel.kind = "client",
            db.system.name = "mongodb",
            db.operation.name = "find",
            db.collection.name = %self.messages.name(),
            message.id = %id,
        )
    )]
    pub async fn get(&self, tenant: &str, id: &str) -> Result<Option<StoredMessage>, StoreError> {
        Ok(self
            .messages
            .find_one(doc! {"_id": id, "tenantId": tenant})
            .await?)
    }

    /// Applies `change` if the document still has `expected_version`; `Ok(false)` when it does
    /// not (someone else changed it first).
    #[tracing::instrument(
        name = "mongodb update",
        skip_all,
        fields(
            otel.kind = "client",
            db.system.name = "mongodb",
            db.operation.name = "update",
            db.collection.name = %self.messages.name(),
            message.id = %id,
        )
    )]
    pub async fn apply(
        &self,
        tenant: &str,
        id: &str,
        expected_version: u64,
        change: &Change,
        at: Timestamp,
        correlation_id: &str,
    ) -> Result<bool, StoreError> {
        let expected = i64::try_from(expected_version).unwrap_or(i64::MAX);
        let filter = doc! {"_id": id, "tenantId": tenant, "version": expected, "deleted": false};
        let at = to_bson(at);
        let update = match change {
            Change::Update {
                content,
                metadata_json,
            } => doc! {"$set": {
                "content": content,
                "metadataJson": metadata_json,
                "updatedAt": at,
                "version": expected + 1,
                "correlationId": correlation_id,
            }},
            Change::Delete => doc! {
                "$set": {
                    "deleted": true,
                    "deletedAt": at,
                    "updatedAt": at,
                    "version": expected + 1,
                    "correlationId": correlation_id,
                },
                "$unset": {"content": "", "metadataJson": "", "senderId": "", "fingerprint": ""},
            },
        };
        let result = self.messages.update_one(filter, update).await?;
        Ok(result.matched_count == 1)
    }

    /// A page of a conversation's live messages, newest first, strictly after `after`.
    pub async fn conversation_page(
        &self,
        tenant: &str,
        conversation: &str,
        after: Option<&After>,
        limit: i64,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let mut filter =
            doc! {"tenantId": tenant, "conversationId": conversation, "deleted": false};
        if let Some(after) = after {
            let t = DateTime::from_millis(after.millis);
            filter.insert(
                "$or",
                vec![
                    doc! {"timestamp": {"$lt": t}},
                    doc! {"timestamp": t, "_id": {"$lt": after.id.as_str()}},
                ],
            );
        }
        let cursor = self
            .messages
            .find(filter)
            .sort(doc! {"timestamp": -1, "_id": -1})
            .limit(limit)
            .await?;
        Ok(cursor.try_collect().await?)
    }

    /// Documents changed at or after `since` (and strictly after `after` among equal times), in
    /// (updatedAt, _id) order: the relay's recovery scan.
    pub async fn changed_since(
        &self,
        after: &After,
        limit: i64,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let t = DateTime::from_millis(after.millis);
        let filter = doc! {"$or": [
            {"updatedAt": {"$gt": t}},
            {"updatedAt": t, "_id": {"$gt": after.id.as_str()}},
        ]};
        let cursor = self
            .messages
            .find(filter)
            .sort(doc! {"updatedAt": 1, "_id": 1})
            .limit(limit)
            .await?;
        Ok(cursor.try_collect().await?)
    }

    /// Up to `limit` tombstones, in `_id` order after `after`, deleted before `deleted_before`
    /// whose delete was already published (changed before `published_before`, the relay's
    /// watermark): each id, and since when the purge has found the index without it.
    pub async fn purgeable(
        &self,
        deleted_before: Timestamp,
        published_before: Timestamp,
        after: &str,
        limit: i64,
    ) -> Result<Vec<(String, Option<i64>)>, StoreError> {
        let filter = purgeable(deleted_before, published_before, doc! {"$gt": after});
        let mut cursor = self
            .plain()
            .find(filter)
            .projection(doc! {"_id": 1, INDEX_GONE_AT: 1})
            .sort(doc! {"_id": 1})
            .limit(limit)
            .await?;
        let mut found = Vec::new();
        while let Some(d) = cursor.try_next().await? {
            if let Ok(id) = d.get_str("_id") {
                let gone = d
                    .get_datetime(INDEX_GONE_AT)
                    .ok()
                    .map(|t| t.timestamp_millis());
                found.push((id.to_owned(), gone));
            }
        }
        Ok(found)
    }

    /// Notes on the tombstones among `ids` that the purge found the index without them (`at`),
    /// unless noted before; the change's own fields (`updatedAt`, `version`) stay as they are,
    /// so the relay sees no change.
    pub async fn note_index_gone(&self, ids: &[String], at: Timestamp) -> Result<(), StoreError> {
        self.plain()
            .update_many(
                doc! {"_id": {"$in": ids}, "deleted": true, INDEX_GONE_AT: {"$exists": false}},
                doc! {"$set": {INDEX_GONE_AT: to_bson(at)}},
            )
            .await?;
        Ok(())
    }

    /// Deletes the tombstones among `ids` that are still purgeable; returns how many.
    pub async fn purge_tombstones(
        &self,
        ids: &[String],
        deleted_before: Timestamp,
        published_before: Timestamp,
    ) -> Result<u64, StoreError> {
        let result = self
            .messages
            .delete_many(purgeable(
                deleted_before,
                published_before,
                doc! {"$in": ids},
            ))
            .await?;
        Ok(result.deleted_count)
    }

    /// The messages collection as plain documents (for reads and writes of a few fields).
    fn plain(&self) -> Collection<Document> {
        self.messages.clone_with_type()
    }

    /// Writes this process's registration (creating it again if a survivor deleted it): its
    /// watermark and the next heartbeat, and clears any adoption mark (it is alive).
    pub async fn heartbeat(
        &self,
        me: &Registration,
        started_at: Timestamp,
    ) -> Result<(), StoreError> {
        self.relay_state
            .update_one(
                doc! {"_id": &me.id},
                doc! {
                    "$set": {
                        "pod": me.pod.as_deref(),
                        "topic": me.topic.as_deref(),
                        WATERMARK: me.millis,
                        "beat": me.beat,
                        "beatAt": DateTime::now(),
                        "startedAt": to_bson(started_at),
                    },
                    "$unset": {"adopted": "", "adoptedBy": "", "claimedBy": ""},
                },
            )
            .upsert(true)
            .await?;
        Ok(())
    }

    /// Every registration; documents of another shape are skipped with a warning.
    pub async fn registrations(&self) -> Result<Vec<Registration>, StoreError> {
        let docs: Vec<Document> = self.relay_state.find(doc! {}).await?.try_collect().await?;
        Ok(docs
            .into_iter()
            .filter_map(|d| match bson::from_document::<Registration>(d.clone()) {
                Ok(r) => Some(r),
                Err(error) => {
                    tracing::warn!(%error, document = %d, "ignoring a relay registration of another shape");
                    None
                }
            })
            .collect())
    }

    /// The lowest watermark of any registration: every change before it is on Kafka.
    pub async fn lowest_watermark(&self) -> Result<Option<i64>, StoreError> {
        Ok(self.registrations().await?.iter().map(|r| r.millis).min())
    }

    /// Marks a registration as being adopted by `by` (best effort: it only spares other
    /// survivors a second scan).
    pub async fn claim(&self, id: &str, by: &str) -> Result<(), StoreError> {
        self.relay_state
            .update_one(
                doc! {"_id": id, "adopted": {"$ne": true}},
                doc! {"$set": {"claimedBy": by}},
            )
            .await?;
        Ok(())
    }

    /// Marks a registration adopted, unless its owner showed a sign of life since `pulse`.
    pub async fn mark_adopted(&self, id: &str, pulse: Pulse, by: &str) -> Result<bool, StoreError> {
        let result = self
            .relay_state
            .update_one(
                pulse_filter(id, pulse),
                doc! {"$set": {"adopted": true, "adoptedBy": by, "adoptedAt": DateTime::now()}},
            )
            .await?;
        Ok(result.matched_count == 1)
    }

    /// Deletes an adopted registration still at `pulse`.
    pub async fn forget(&self, id: &str, pulse: Pulse) -> Result<(), StoreError> {
        let mut filter = pulse_filter(id, pulse);
        filter.insert("adopted", true);
        self.relay_state.delete_one(filter).await?;
        Ok(())
    }

    /// Deletes this process's registration (a clean stop that owes nothing).
    pub async fn deregister(&self, id: &str) -> Result<(), StoreError> {
        self.relay_state.delete_one(doc! {"_id": id}).await?;
        Ok(())
    }
}

/// A registration that has not moved since `pulse`.
fn pulse_filter(id: &str, pulse: Pulse) -> Document {
    match pulse {
        Pulse::Beat(beat) => doc! {"_id": id, "beat": beat},
        Pulse::Legacy(millis) => doc! {"_id": id, "beat": {"$exists": false}, "millis": millis},
    }
}

//! The MongoDB repository: message documents, their conditional writes, and the relay's
//! registrations (one per api-server process: watermark and heartbeat, see `replicas`).
//!
//! Owns the document shape (below), every query, and the indexes they need. Every write is one
//! document operation; updates are conditional on `{_id, tenantId, version}` so that a stale
//! writer matches nothing (MongoDB makes that atomic; FerretDB 1.x does not, which is why the
//! service also serializes writes per id in-process). Every read filters by `tenantId`: a foreign
//! tenant's message is indistinguishable from a missing one.
//!
//! It decides nothing about HTTP, versions or events: the service computes the new state, the
//! relay turns documents into events.
//!
//! Document (`_id` = message id as a lowercase hyphenated UUID):
//! `tenantId, conversationId, senderId, content, metadataJson, timestamp` (creation),
//! `updatedAt` (time of the latest change: creation, update or delete; the relay's watermark
//! field), `version`, `deleted`, `deletedAt`, `fingerprint` (idempotent creates only),
//! `correlationId` (of the latest change, so a re-publish carries it). A tombstone keeps only
//! what its delete event needs: content, metadata and sender are removed.
//!
//! Metadata is stored as its JSON text, not as a BSON subdocument: client-chosen keys may
//! contain `.` or start with `$`, which MongoDB-compatible servers restrict, and numbers beyond
//! `i64` have no BSON type. The API never queries inside metadata (search does), so nothing is
//! lost and a message reads back exactly as written.

use futures::TryStreamExt;
use mongodb::bson::{self, DateTime, Document, doc};
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::options::{ClientOptions, IndexOptions, Tls, TlsOptions};
use mongodb::{Client, Collection, IndexModel};
use pipeline_contract::access::{Refused, Service, mongodb_cause};
use pipeline_contract::event::{DeletedPayload, MessageEvent, MessagePayload};
use pipeline_contract::time::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::replicas::{Pulse, Registration};

/// A message document as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredMessage {
    #[serde(rename = "_id")]
    pub id: String,
    pub tenant_id: String,
    pub conversation_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata_json: Option<String>,
    pub timestamp: DateTime,
    pub updated_at: DateTime,
    pub version: i64,
    pub deleted: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<DateTime>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    #[serde(default)]
    pub correlation_id: String,
}

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

/// A document that does not have the shape this module writes.
#[derive(Debug, thiserror::Error)]
#[error("message document {id} is corrupt: {reason}")]
pub struct CorruptDocument {
    pub id: String,
    pub reason: String,
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
        let Self::Mongo(error) = self else {
            return None;
        };
        let code = match error.kind.as_ref() {
            ErrorKind::Command(c) => Some(c.code),
            _ => None,
        };
        let text = format!("{error} {error:?}");
        mongodb_cause(code, &text)
            .map(|cause| Refused::new(Service::MongoDb, cause, endpoint, error.to_string()))
    }
}

/// The hosts of a MongoDB URI, without its scheme, credentials and options: how refusals and
/// logs name the server (the URI itself may hold a password).
pub fn endpoint(uri: &str) -> String {
    let rest = uri.split_once("://").map_or(uri, |(_, rest)| rest);
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    authority
        .rsplit_once('@')
        .map_or(authority, |(_, hosts)| hosts)
        .to_owned()
}

pub fn to_timestamp(t: DateTime) -> Timestamp {
    Timestamp::from_millis(t.timestamp_millis()).unwrap_or_else(|| {
        // BSON dates beyond chrono's range cannot come from this module.
        Timestamp::from_millis(0).expect("the epoch is a valid time")
    })
}

pub fn to_bson(t: Timestamp) -> DateTime {
    DateTime::from_millis(t.timestamp_millis())
}

impl StoredMessage {
    fn corrupt(&self, reason: impl Into<String>) -> CorruptDocument {
        CorruptDocument {
            id: self.id.clone(),
            reason: reason.into(),
        }
    }

    fn uuid(&self, field: &str, value: &str) -> Result<Uuid, CorruptDocument> {
        Uuid::parse_str(value).map_err(|e| self.corrupt(format!("{field}: {e}")))
    }

    pub fn version(&self) -> u64 {
        u64::try_from(self.version).unwrap_or(0)
    }

    pub fn metadata(&self) -> Result<Map<String, Value>, CorruptDocument> {
        match &self.metadata_json {
            None => Ok(Map::new()),
            Some(text) => {
                serde_json::from_str(text).map_err(|e| self.corrupt(format!("metadataJson: {e}")))
            }
        }
    }

    /// The API view of a live message.
    pub fn to_message(&self) -> Result<Message, CorruptDocument> {
        let sender = self
            .sender_id
            .as_deref()
            .ok_or_else(|| self.corrupt("live message without senderId"))?;
        let version = self.version();
        Ok(Message {
            id: self.uuid("_id", &self.id)?,
            conversation_id: self.uuid("conversationId", &self.conversation_id)?,
            sender_id: self.uuid("senderId", sender)?,
            content: self
                .content
                .clone()
                .ok_or_else(|| self.corrupt("live message without content"))?,
            timestamp: to_timestamp(self.timestamp),
            updated_at: (version > 1).then(|| to_timestamp(self.updated_at)),
            metadata: self.metadata()?,
            version,
        })
    }

    /// The event of this document's current state: `deleted` for a tombstone, `created` at
    /// version 1, `updated` after that.
    pub fn to_event(&self) -> Result<MessageEvent, CorruptDocument> {
        if self.deleted {
            return Ok(MessageEvent::Deleted(DeletedPayload {
                id: self.uuid("_id", &self.id)?,
                conversation_id: Some(self.uuid("conversationId", &self.conversation_id)?),
                tenant_id: self.tenant_id.clone(),
                version: Some(self.version()),
                deleted_at: Some(to_timestamp(self.deleted_at.unwrap_or(self.updated_at))),
            }));
        }
        let m = self.to_message()?;
        let payload = MessagePayload {
            id: m.id,
            conversation_id: Some(m.conversation_id),
            sender_id: Some(m.sender_id),
            content: m.content,
            tenant_id: self.tenant_id.clone(),
            timestamp: Some(m.timestamp),
            updated_at: m.updated_at,
            metadata: m.metadata,
            version: Some(m.version),
        };
        Ok(if m.version <= 1 {
            MessageEvent::Created(payload)
        } else {
            MessageEvent::Updated(payload)
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

/// The repository: the messages collection and the relay's state collection.
#[derive(Debug, Clone)]
pub struct Store {
    messages: Collection<StoredMessage>,
    relay_state: Collection<Document>,
    db: mongodb::Database,
}

pub fn is_duplicate_key(error: &mongodb::error::Error) -> bool {
    matches!(
        error.kind.as_ref(),
        ErrorKind::Write(WriteFailure::WriteError(e)) if e.code == 11000
    ) || matches!(error.kind.as_ref(), ErrorKind::InsertMany(e)
        if e.write_errors.as_ref().is_some_and(|w| w.iter().any(|e| e.code == 11000)))
}

impl Store {
    /// A store on the server of `uri`, over TLS trusting `ca_file` when one is given.
    pub async fn connect(
        uri: &str,
        ca_file: Option<&std::path::Path>,
        database: &str,
        collection: &str,
    ) -> Result<Self, StoreError> {
        let mut options = ClientOptions::parse(uri).await?;
        if let Some(ca) = ca_file {
            // The URI's other TLS settings (a client certificate) stay.
            let mut tls = match options.tls.take() {
                Some(Tls::Enabled(tls)) => tls,
                _ => TlsOptions::default(),
            };
            tls.ca_file_path = Some(ca.to_owned());
            options.tls = Some(Tls::Enabled(tls));
        }
        let client = Client::with_options(options)?;
        Ok(Self::new(&client, database, collection))
    }

    pub fn new(client: &Client, database: &str, collection: &str) -> Self {
        let db = client.database(database);
        Self {
            messages: db.collection(collection),
            relay_state: db.collection(&format!("{collection}_relay")),
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

    /// Inserts a new document; `Ok(false)` when its `_id` exists already.
    pub async fn insert(&self, message: &StoredMessage) -> Result<bool, StoreError> {
        match self.messages.insert_one(message).await {
            Ok(_) => Ok(true),
            Err(e) if is_duplicate_key(&e) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// The tenant's document with this id, tombstones included.
    pub async fn get(&self, tenant: &str, id: &str) -> Result<Option<StoredMessage>, StoreError> {
        Ok(self
            .messages
            .find_one(doc! {"_id": id, "tenantId": tenant})
            .await?)
    }

    /// Applies `change` if the document still has `expected_version`; `Ok(false)` when it does
    /// not (someone else changed it first).
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

    /// Deletes tombstones deleted before `deleted_before` whose delete was already published
    /// (changed before `published_before`, the relay's watermark). Returns how many.
    pub async fn purge_tombstones(
        &self,
        deleted_before: Timestamp,
        published_before: Timestamp,
    ) -> Result<u64, StoreError> {
        let result = self
            .messages
            .delete_many(doc! {
                "deleted": true,
                "deletedAt": {"$lt": to_bson(deleted_before)},
                "updatedAt": {"$lt": to_bson(published_before)},
            })
            .await?;
        Ok(result.deleted_count)
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
                        "millis": me.millis,
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

/// BSON of a value, for tests and tools that write documents by hand.
pub fn document_of(message: &StoredMessage) -> Result<Document, bson::ser::Error> {
    bson::to_document(message)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn live(version: i64) -> StoredMessage {
        StoredMessage {
            id: "123e4567-e89b-12d3-a456-426614174000".into(),
            tenant_id: "t1".into(),
            conversation_id: "123e4567-e89b-12d3-a456-426614174001".into(),
            sender_id: Some("123e4567-e89b-12d3-a456-426614174002".into()),
            content: Some("hello".into()),
            metadata_json: Some(r#"{"a.b":1,"$x":18446744073709551615}"#.into()),
            timestamp: DateTime::from_millis(1_000),
            updated_at: DateTime::from_millis(2_000),
            version,
            deleted: false,
            deleted_at: None,
            fingerprint: None,
            correlation_id: "c".into(),
        }
    }

    #[test]
    fn events_follow_the_version_and_the_tombstone() {
        let created = live(1).to_event().unwrap();
        let MessageEvent::Created(p) = &created else {
            panic!("{created:?}")
        };
        assert_eq!(p.updated_at, None);
        assert_eq!(p.version, Some(1));
        assert_eq!(p.metadata["$x"], json!(18446744073709551615u64));
        assert_eq!(created.changed_at().unwrap().timestamp_millis(), 1_000);

        let updated = live(3).to_event().unwrap();
        let MessageEvent::Updated(p) = &updated else {
            panic!("{updated:?}")
        };
        assert_eq!(p.updated_at.unwrap().timestamp_millis(), 2_000);
        assert_eq!(updated.changed_at().unwrap().timestamp_millis(), 2_000);

        let mut tombstone = live(4);
        tombstone.deleted = true;
        tombstone.deleted_at = Some(DateTime::from_millis(2_000));
        (
            tombstone.content,
            tombstone.metadata_json,
            tombstone.sender_id,
        ) = (None, None, None);
        let deleted = tombstone.to_event().unwrap();
        let MessageEvent::Deleted(p) = &deleted else {
            panic!("{deleted:?}")
        };
        assert_eq!((p.version, p.tenant_id.as_str()), (Some(4), "t1"));
        assert!(tombstone.to_message().is_err());
    }

    #[test]
    fn corrupt_documents_are_named() {
        let mut bad = live(1);
        bad.conversation_id = "nope".into();
        let error = bad.to_event().unwrap_err().to_string();
        assert!(error.contains("conversationId"), "{error}");
        let mut bad = live(1);
        bad.metadata_json = Some("{".into());
        assert!(
            bad.to_message()
                .unwrap_err()
                .reason
                .contains("metadataJson")
        );
    }

    #[test]
    fn documents_round_trip_through_bson() {
        let m = live(2);
        let doc = document_of(&m).unwrap();
        assert_eq!(doc.get_str("_id").unwrap(), m.id);
        assert!(doc.get_datetime("updatedAt").is_ok());
        assert!(!doc.contains_key("deletedAt"));
        let back: StoredMessage = bson::from_document(doc).unwrap();
        assert_eq!(back, m);
    }
}

#[cfg(test)]
mod endpoint_tests {
    use super::endpoint;

    #[test]
    fn the_endpoint_of_a_uri_has_no_credentials_or_options() {
        for (uri, want) in [
            ("mongodb://10.0.0.1:27017/", "10.0.0.1:27017"),
            (
                "mongodb://mp-api:s3cret@10.0.0.1:27018/?tls=true&tlsCAFile=/ca.crt",
                "10.0.0.1:27018",
            ),
            ("mongodb://u:p@a:1,b:2/db?replicaSet=rs", "a:1,b:2"),
            ("mongodb+srv://u:p%40x@cluster.example", "cluster.example"),
            ("a:1", "a:1"),
        ] {
            assert_eq!(endpoint(uri), want, "{uri}");
        }
    }
}

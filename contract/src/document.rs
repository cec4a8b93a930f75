//! The message document in MongoDB: its shape, and the event and search document of its state.
//!
//! The api-server writes it and the indexer's audit and rebuild read it, so the shape lives here
//! once (feature `document`). Document (`_id` = message id as a lowercase hyphenated UUID):
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
//!
//! Beside the messages, `<collection>_relay` holds one registration per api-server process; its
//! [`WATERMARK`] field is the time before which that process has published every change.

use mongodb::bson::{self, DateTime, Document};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::event::{DeletedPayload, MessageEvent, MessagePayload};
use crate::time::Timestamp;

/// Field names of the message document, for queries.
pub mod field {
    pub const ID: &str = "_id";
    pub const VERSION: &str = "version";
    pub const DELETED: &str = "deleted";
}

/// The field of a relay registration that holds its watermark (epoch milliseconds).
pub const WATERMARK: &str = "millis";

/// The collection of the relay's registrations beside the messages collection `collection`.
pub fn relay_state_collection(collection: &str) -> String {
    format!("{collection}_relay")
}

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

/// A document that does not have the shape this module describes.
#[derive(Debug, thiserror::Error)]
#[error("message document {id} is corrupt: {reason}")]
pub struct CorruptDocument {
    pub id: String,
    pub reason: String,
}

pub fn to_timestamp(t: DateTime) -> Timestamp {
    Timestamp::from_millis(t.timestamp_millis()).unwrap_or_else(|| {
        // BSON dates beyond chrono's range cannot come from the api-server.
        Timestamp::from_millis(0).expect("the epoch is a valid time")
    })
}

pub fn to_bson(t: Timestamp) -> DateTime {
    DateTime::from_millis(t.timestamp_millis())
}

impl StoredMessage {
    /// This document is corrupt for `reason`.
    pub fn corrupt(&self, reason: impl Into<String>) -> CorruptDocument {
        CorruptDocument {
            id: self.id.clone(),
            reason: reason.into(),
        }
    }

    /// The UUID in `field`, whose text is `value`.
    pub fn uuid(&self, field: &str, value: &str) -> Result<Uuid, CorruptDocument> {
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

    /// The sender and content of a live message.
    pub fn live_fields(&self) -> Result<(Uuid, String), CorruptDocument> {
        let sender = self
            .sender_id
            .as_deref()
            .ok_or_else(|| self.corrupt("live message without senderId"))?;
        let content = self
            .content
            .clone()
            .ok_or_else(|| self.corrupt("live message without content"))?;
        Ok((self.uuid("senderId", sender)?, content))
    }

    /// Time of the latest accepted update of a live message; `None` until the first one.
    pub fn last_update(&self) -> Option<Timestamp> {
        (self.version() > 1).then(|| to_timestamp(self.updated_at))
    }

    /// The event of this document's current state: `deleted` for a tombstone, `created` at
    /// version 1, `updated` after that.
    pub fn to_event(&self) -> Result<MessageEvent, CorruptDocument> {
        let id = self.uuid("_id", &self.id)?;
        let conversation_id = Some(self.uuid("conversationId", &self.conversation_id)?);
        let version = self.version();
        if self.deleted {
            return Ok(MessageEvent::Deleted(DeletedPayload {
                id,
                conversation_id,
                tenant_id: self.tenant_id.clone(),
                version: Some(version),
                deleted_at: Some(to_timestamp(self.deleted_at.unwrap_or(self.updated_at))),
            }));
        }
        let (sender_id, content) = self.live_fields()?;
        let payload = MessagePayload {
            id,
            conversation_id,
            sender_id: Some(sender_id),
            content,
            tenant_id: self.tenant_id.clone(),
            timestamp: Some(to_timestamp(self.timestamp)),
            updated_at: self.last_update(),
            metadata: self.metadata()?,
            version: Some(version),
        };
        Ok(if version <= 1 {
            MessageEvent::Created(payload)
        } else {
            MessageEvent::Updated(payload)
        })
    }
}

/// BSON of a document, for tests and tools that write documents by hand.
pub fn document_of(message: &StoredMessage) -> Result<Document, bson::ser::Error> {
    bson::to_document(message)
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
        assert!(tombstone.live_fields().is_err());
    }

    #[test]
    fn corrupt_documents_are_named() {
        let mut bad = live(1);
        bad.conversation_id = "nope".into();
        let error = bad.to_event().unwrap_err().to_string();
        assert!(error.contains("conversationId"), "{error}");
        let mut bad = live(1);
        bad.metadata_json = Some("{".into());
        assert!(bad.to_event().unwrap_err().reason.contains("metadataJson"));
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

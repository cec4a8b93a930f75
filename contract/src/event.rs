//! The change events on the topic.
//!
//! Wire format: `{"type": "message.created" | "message.updated" | "message.deleted", "payload": {...}}`
//! with camelCase fields. Every payload we produce carries the full current state and a `version`
//! (1 at creation, +1 on every accepted change) so the indexer can always write whole documents
//! with external versions. Decoding is lenient where the seed's examples are (fields they omit are
//! optional, unknown fields are ignored) and strict about what would corrupt the index: an unknown
//! `type` or a payload of the wrong shape is a typed [`DecodeError`] that names its DLQ class.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::dlq::ErrorClass;
use crate::time::Timestamp;

/// The three kinds of change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    Created,
    Updated,
    Deleted,
}

impl EventType {
    pub const ALL: [EventType; 3] = [Self::Created, Self::Updated, Self::Deleted];

    /// The value of the envelope's `type` field.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Created => "message.created",
            Self::Updated => "message.updated",
            Self::Deleted => "message.deleted",
        }
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EventType {
    type Err = DecodeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| DecodeError::UnknownType {
                event_type: s.to_owned(),
            })
    }
}

/// Payload of `message.created` and `message.updated`: the message's full state after the change.
///
/// `conversationId`, `senderId`, `timestamp` and `version` are optional only because the seed's
/// examples omit some of them; everything this project produces sets them all, and the search
/// document refuses an event that lacks what the index needs (see `search::SearchDocument`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MessagePayload {
    pub id: Uuid,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversation_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender_id: Option<Uuid>,
    pub content: String,
    pub tenant_id: String,
    /// Creation time of the message (not of this change).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<Timestamp>,
    /// Time of the latest accepted update; absent until the first one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<Timestamp>,
    #[serde(default)]
    pub metadata: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
}

/// Payload of `message.deleted`: enough to write a versioned tombstone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeletedPayload {
    pub id: Uuid,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversation_id: Option<Uuid>,
    pub tenant_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<Timestamp>,
}

/// One change event: the envelope `{"type", "payload"}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", content = "payload")]
pub enum MessageEvent {
    #[serde(rename = "message.created")]
    Created(MessagePayload),
    #[serde(rename = "message.updated")]
    Updated(MessagePayload),
    #[serde(rename = "message.deleted")]
    Deleted(DeletedPayload),
}

/// Why bytes from the topic are not an event we can read.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Not JSON, or not an object with a string `type` and an object `payload`.
    #[error("not an event envelope: {source}")]
    Malformed {
        #[source]
        source: serde_json::Error,
    },
    /// A `type` this version of the contract does not know.
    #[error("unknown event type {event_type:?}")]
    UnknownType { event_type: String },
    /// A known `type` whose payload lacks a required field or has a field of the wrong type.
    #[error("invalid {event_type} payload: {source}")]
    InvalidPayload {
        event_type: EventType,
        #[source]
        source: serde_json::Error,
    },
}

impl DecodeError {
    /// The DLQ error class a record failing this way is dead-lettered with.
    pub fn error_class(&self) -> ErrorClass {
        match self {
            Self::UnknownType { .. } => ErrorClass::UnknownType,
            Self::Malformed { .. } | Self::InvalidPayload { .. } => ErrorClass::Undecodable,
        }
    }
}

#[derive(Deserialize)]
struct RawEnvelope<'a> {
    #[serde(rename = "type", borrow)]
    event_type: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    payload: &'a serde_json::value::RawValue,
}

#[derive(Deserialize)]
struct Envelope {
    #[serde(rename = "type")]
    event_type: String,
    payload: Map<String, Value>,
}

impl MessageEvent {
    /// Decodes a record value. Unknown fields are ignored at every level.
    ///
    /// The payload is parsed once, straight into its type: this runs for every record the
    /// indexer reads, so it does not go through an intermediate `Value`.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let envelope: RawEnvelope<'_> =
            serde_json::from_slice(bytes).map_err(|source| DecodeError::Malformed { source })?;
        let event_type: EventType = envelope.event_type.parse()?;
        let payload = envelope.payload.get();
        if !payload.trim_start().starts_with('{') {
            let source = serde_json::from_str::<Map<String, Value>>(payload)
                .expect_err("a payload that is not an object fails to parse as one");
            return Err(DecodeError::Malformed { source });
        }
        let invalid = |source| DecodeError::InvalidPayload { event_type, source };
        Ok(match event_type {
            EventType::Created => Self::Created(serde_json::from_str(payload).map_err(invalid)?),
            EventType::Updated => Self::Updated(serde_json::from_str(payload).map_err(invalid)?),
            EventType::Deleted => Self::Deleted(serde_json::from_str(payload).map_err(invalid)?),
        })
    }

    fn from_parts(event_type: &str, payload: Value) -> Result<Self, DecodeError> {
        let event_type: EventType = event_type.parse()?;
        let invalid = |source| DecodeError::InvalidPayload { event_type, source };
        Ok(match event_type {
            EventType::Created => Self::Created(serde_json::from_value(payload).map_err(invalid)?),
            EventType::Updated => Self::Updated(serde_json::from_value(payload).map_err(invalid)?),
            EventType::Deleted => Self::Deleted(serde_json::from_value(payload).map_err(invalid)?),
        })
    }

    /// The record value.
    pub fn encode(&self) -> Vec<u8> {
        // Serializing plain data (string keys, no maps with non-string keys) cannot fail.
        serde_json::to_vec(self).expect("an event always serializes")
    }

    pub fn event_type(&self) -> EventType {
        match self {
            Self::Created(_) => EventType::Created,
            Self::Updated(_) => EventType::Updated,
            Self::Deleted(_) => EventType::Deleted,
        }
    }

    pub fn id(&self) -> Uuid {
        match self {
            Self::Created(p) | Self::Updated(p) => p.id,
            Self::Deleted(p) => p.id,
        }
    }

    pub fn tenant_id(&self) -> &str {
        match self {
            Self::Created(p) | Self::Updated(p) => &p.tenant_id,
            Self::Deleted(p) => &p.tenant_id,
        }
    }

    pub fn conversation_id(&self) -> Option<Uuid> {
        match self {
            Self::Created(p) | Self::Updated(p) => p.conversation_id,
            Self::Deleted(p) => p.conversation_id,
        }
    }

    pub fn version(&self) -> Option<u64> {
        match self {
            Self::Created(p) | Self::Updated(p) => p.version,
            Self::Deleted(p) => p.version,
        }
    }

    /// When the change this event describes happened: creation, latest update, or deletion time.
    /// This is the value of the record's `timestamp` header.
    pub fn changed_at(&self) -> Option<Timestamp> {
        match self {
            Self::Created(p) => p.timestamp,
            Self::Updated(p) => p.updated_at.or(p.timestamp),
            Self::Deleted(p) => p.deleted_at,
        }
    }
}

impl<'de> Deserialize<'de> for MessageEvent {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let envelope = Envelope::deserialize(deserializer)?;
        Self::from_parts(&envelope.event_type, Value::Object(envelope.payload))
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn full_created() -> MessageEvent {
        MessageEvent::Created(MessagePayload {
            id: Uuid::new_v4(),
            conversation_id: Some(Uuid::new_v4()),
            sender_id: Some(Uuid::new_v4()),
            content: "héllo ✓".into(),
            tenant_id: "tenant-a".into(),
            timestamp: Some(Timestamp::now()),
            updated_at: None,
            metadata: json!({"k": "v", "n": 1, "nested": {"b": true}})
                .as_object()
                .unwrap()
                .clone(),
            version: Some(1),
        })
    }

    #[test]
    fn event_type_names_round_trip() {
        for t in EventType::ALL {
            assert_eq!(t.as_str().parse::<EventType>().unwrap(), t);
        }
    }

    #[test]
    fn round_trips_through_bytes_and_serde() {
        let created = full_created();
        let MessageEvent::Created(state) = created.clone() else {
            unreachable!()
        };
        let updated = MessageEvent::Updated(MessagePayload {
            content: "edited".into(),
            updated_at: Some(Timestamp::now()),
            version: Some(2),
            ..state.clone()
        });
        let deleted = MessageEvent::Deleted(DeletedPayload {
            id: state.id,
            conversation_id: state.conversation_id,
            tenant_id: state.tenant_id.clone(),
            version: Some(3),
            deleted_at: Some(Timestamp::now()),
        });
        for event in [created, updated, deleted] {
            assert_eq!(MessageEvent::decode(&event.encode()).unwrap(), event);
            let value = serde_json::to_value(&event).unwrap();
            assert_eq!(value["type"], event.event_type().as_str());
            assert_eq!(
                serde_json::from_value::<MessageEvent>(value).unwrap(),
                event
            );
        }
    }

    #[test]
    fn decode_errors_are_typed_and_classed() {
        let id = Uuid::new_v4();
        let cases: Vec<(Vec<u8>, &str, ErrorClass)> = vec![
            (b"{not json".to_vec(), "malformed", ErrorClass::Undecodable),
            (b"[]".to_vec(), "malformed", ErrorClass::Undecodable),
            (json!({"payload": {}}).to_string().into(), "malformed", ErrorClass::Undecodable),
            (json!({"type": "message.created"}).to_string().into(), "malformed", ErrorClass::Undecodable),
            (
                json!({"type": "message.archived", "payload": {"id": id}}).to_string().into(),
                "unknown",
                ErrorClass::UnknownType,
            ),
            (
                json!({"type": "message.created", "payload": {"id": id, "tenantId": "t"}}).to_string().into(),
                "invalid",
                ErrorClass::Undecodable,
            ),
            (
                json!({"type": "message.deleted", "payload": {"id": "not-a-uuid", "tenantId": "t"}})
                    .to_string()
                    .into(),
                "invalid",
                ErrorClass::Undecodable,
            ),
            (
                json!({"type": "message.updated", "payload": {"id": id, "tenantId": "t", "content": "x", "version": -1}})
                    .to_string()
                    .into(),
                "invalid",
                ErrorClass::Undecodable,
            ),
        ];
        for (bytes, kind, class) in cases {
            let err = MessageEvent::decode(&bytes).unwrap_err();
            let matched = matches!(
                (&err, kind),
                (DecodeError::Malformed { .. }, "malformed")
                    | (DecodeError::UnknownType { .. }, "unknown")
                    | (DecodeError::InvalidPayload { .. }, "invalid")
            );
            assert!(matched, "{} gave {err:?}", String::from_utf8_lossy(&bytes));
            assert_eq!(err.error_class(), class, "{err}");
        }
    }

    #[test]
    fn unknown_type_error_names_the_type() {
        let err = MessageEvent::decode(br#"{"type":"message.pinned","payload":{}}"#).unwrap_err();
        assert!(
            matches!(&err, DecodeError::UnknownType { event_type } if event_type == "message.pinned")
        );
        assert_eq!(err.to_string(), "unknown event type \"message.pinned\"");
    }

    #[test]
    fn unknown_fields_are_tolerated_everywhere() {
        let id = Uuid::new_v4();
        let bytes = json!({
            "type": "message.deleted",
            "schema": 7,
            "payload": {"id": id, "tenantId": "t", "version": 4, "reason": "spam"}
        })
        .to_string();
        let event = MessageEvent::decode(bytes.as_bytes()).unwrap();
        assert_eq!(event.id(), id);
        assert_eq!(event.version(), Some(4));
    }

    #[test]
    fn changed_at_is_the_time_of_the_change() {
        let MessageEvent::Created(state) = full_created() else {
            unreachable!()
        };
        let later =
            Timestamp::from_millis(state.timestamp.unwrap().timestamp_millis() + 5).unwrap();
        assert_eq!(
            MessageEvent::Created(state.clone()).changed_at(),
            state.timestamp
        );
        let updated = MessagePayload {
            updated_at: Some(later),
            ..state.clone()
        };
        assert_eq!(MessageEvent::Updated(updated).changed_at(), Some(later));
    }
}

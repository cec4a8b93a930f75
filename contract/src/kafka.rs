//! Kafka names and the record layout of an event.
//!
//! Key: the conversation id, so one conversation's changes stay in order on one partition.
//! Headers: `correlation-id`, `message-id` = `<id>:<version>` (the same on every re-publish of one
//! change, so consumers can deduplicate), `timestamp` (time of the change) and, when tracing is on,
//! `traceparent`. Topics are never auto-created: the operator (or a test's set-up) creates them.

use std::fmt;
use std::str::FromStr;

use uuid::Uuid;

use crate::event::MessageEvent;
use crate::time::Timestamp;

/// The events topic unless configured otherwise.
pub const DEFAULT_TOPIC: &str = "message-events-v1-prod";
/// The indexer's consumer group unless configured otherwise.
pub const DEFAULT_CONSUMER_GROUP: &str = "message-elasticsearch-indexer";
/// Seven days, the events topic's `retention.ms`.
pub const DEFAULT_RETENTION_MS: i64 = 7 * 24 * 60 * 60 * 1000;

/// Record header names.
pub mod header {
    pub const CORRELATION_ID: &str = "correlation-id";
    pub const MESSAGE_ID: &str = "message-id";
    pub const TIMESTAMP: &str = "timestamp";
    pub const TRACEPARENT: &str = "traceparent";
}

/// The record key of an event: its conversation id. `None` for an event that lacks one (only
/// foreign events can; ours always carry it).
pub fn record_key(event: &MessageEvent) -> Option<String> {
    event.conversation_id().map(|c| c.to_string())
}

/// The `message-id` header: one change of one message, `<id>:<version>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MessageId {
    pub id: Uuid,
    pub version: u64,
}

impl MessageId {
    /// The header value for an event; `None` when the event has no version.
    pub fn of(event: &MessageEvent) -> Option<Self> {
        event.version().map(|version| Self {
            id: event.id(),
            version,
        })
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.id.hyphenated(), self.version)
    }
}

/// A header value that does not follow the contract.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("header {name} is missing")]
    Missing { name: &'static str },
    #[error("header {name} is not valid: {value:?}")]
    Invalid { name: &'static str, value: String },
}

impl FromStr for MessageId {
    type Err = HeaderError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || HeaderError::Invalid {
            name: header::MESSAGE_ID,
            value: s.to_owned(),
        };
        let (id, version) = s.rsplit_once(':').ok_or_else(invalid)?;
        Ok(Self {
            id: Uuid::try_parse(id).map_err(|_| invalid())?,
            version: version.parse().map_err(|_| invalid())?,
        })
    }
}

/// The headers every event record carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventHeaders {
    pub correlation_id: String,
    pub message_id: MessageId,
    pub timestamp: Timestamp,
    pub traceparent: Option<String>,
}

impl EventHeaders {
    /// Name/value pairs in a stable order, ready for any Kafka client.
    pub fn pairs(&self) -> Vec<(&'static str, String)> {
        let mut pairs = vec![
            (header::CORRELATION_ID, self.correlation_id.clone()),
            (header::MESSAGE_ID, self.message_id.to_string()),
            (header::TIMESTAMP, self.timestamp.to_string()),
        ];
        if let Some(tp) = &self.traceparent {
            pairs.push((header::TRACEPARENT, tp.clone()));
        }
        pairs
    }

    /// Reads the headers from a record's name/value pairs; the first occurrence of a name wins.
    pub fn parse<'a>(
        pairs: impl IntoIterator<Item = (&'a str, Option<&'a [u8]>)>,
    ) -> Result<Self, HeaderError> {
        let (mut correlation_id, mut message_id, mut timestamp, mut traceparent) =
            (None, None, None, None);
        for (name, value) in pairs {
            let slot = match name {
                header::CORRELATION_ID => &mut correlation_id,
                header::MESSAGE_ID => &mut message_id,
                header::TIMESTAMP => &mut timestamp,
                header::TRACEPARENT => &mut traceparent,
                _ => continue,
            };
            if slot.is_none() {
                *slot = Some(text(name_of(name), value)?);
            }
        }
        let required = |v: Option<String>, name| v.ok_or(HeaderError::Missing { name });
        let timestamp = required(timestamp, header::TIMESTAMP)?;
        Ok(Self {
            correlation_id: required(correlation_id, header::CORRELATION_ID)?,
            message_id: required(message_id, header::MESSAGE_ID)?.parse()?,
            timestamp: timestamp.parse().map_err(|_| HeaderError::Invalid {
                name: header::TIMESTAMP,
                value: timestamp.clone(),
            })?,
            traceparent,
        })
    }
}

fn name_of(name: &str) -> &'static str {
    [
        header::CORRELATION_ID,
        header::MESSAGE_ID,
        header::TIMESTAMP,
        header::TRACEPARENT,
    ]
    .into_iter()
    .find(|n| *n == name)
    .unwrap_or("header")
}

fn text(name: &'static str, value: Option<&[u8]>) -> Result<String, HeaderError> {
    let value = value.unwrap_or_default();
    String::from_utf8(value.to_vec()).map_err(|_| HeaderError::Invalid {
        name,
        value: String::from_utf8_lossy(value).into_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_id_is_id_colon_version() {
        let id = Uuid::parse_str("123e4567-e89b-12d3-a456-426614174000").unwrap();
        let mid = MessageId { id, version: 3 };
        assert_eq!(mid.to_string(), "123e4567-e89b-12d3-a456-426614174000:3");
        assert_eq!(mid.to_string().parse::<MessageId>().unwrap(), mid);
    }

    #[test]
    fn message_id_rejects_malformed_values() {
        for bad in [
            "",
            "abc",
            "123e4567-e89b-12d3-a456-426614174000",
            "x:1",
            "123e4567-e89b-12d3-a456-426614174000:-1",
            "123e4567-e89b-12d3-a456-426614174000:",
        ] {
            assert!(bad.parse::<MessageId>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn headers_round_trip_and_report_what_is_missing() {
        let headers = EventHeaders {
            correlation_id: "c-1".into(),
            message_id: MessageId {
                id: Uuid::new_v4(),
                version: 2,
            },
            timestamp: Timestamp::now(),
            traceparent: None,
        };
        let pairs = headers.pairs();
        let as_bytes = || pairs.iter().map(|(n, v)| (*n, Some(v.as_bytes())));
        assert_eq!(EventHeaders::parse(as_bytes()).unwrap(), headers);

        let without_ts = as_bytes().filter(|(n, _)| *n != header::TIMESTAMP);
        assert_eq!(
            EventHeaders::parse(without_ts).unwrap_err(),
            HeaderError::Missing {
                name: header::TIMESTAMP
            }
        );
        let garbled = as_bytes().map(|(n, v)| {
            if n == header::TIMESTAMP {
                (n, Some(&b"nope"[..]))
            } else {
                (n, v)
            }
        });
        assert!(matches!(
            EventHeaders::parse(garbled).unwrap_err(),
            HeaderError::Invalid {
                name: header::TIMESTAMP,
                ..
            }
        ));
    }
}

//! The event examples the project started from (kept in `fixtures/`) against our encoding.
//!
//! They must decode, and what we encode must contain every field they have, with equal JSON
//! values. Times are the one deliberate difference: we always write milliseconds
//! (`10:30:00.000Z` for the seed's `10:30:00Z`), so times are compared as instants.

use pipeline_contract::kafka::{MessageId, record_key};
use pipeline_contract::search::{NotIndexable, SearchDocument};
use pipeline_contract::{EventType, MessageEvent, Timestamp};
use serde_json::{Value, json};

const SEEDS: [(&str, &str); 3] = [
    ("created", include_str!("fixtures/seed-created.json")),
    ("updated", include_str!("fixtures/seed-updated.json")),
    ("deleted", include_str!("fixtures/seed-deleted.json")),
];

/// Asserts that `ours` has every field of `seed` (recursively) with an equal value.
fn assert_contains(ours: &Value, seed: &Value, path: &str) {
    match (ours, seed) {
        (Value::Object(o), Value::Object(s)) => {
            for (k, v) in s {
                let here = format!("{path}.{k}");
                let mine = o
                    .get(k)
                    .unwrap_or_else(|| panic!("{here} is missing from our encoding"));
                assert_contains(mine, v, &here);
            }
        }
        (Value::String(o), Value::String(s)) if o != s => {
            let (Ok(a), Ok(b)) = (o.parse::<Timestamp>(), s.parse::<Timestamp>()) else {
                panic!("{path}: ours {o:?} != seed {s:?}");
            };
            assert_eq!(a, b, "{path}: times differ");
        }
        _ => assert_eq!(ours, seed, "{path}"),
    }
}

#[test]
fn the_seed_examples_decode() {
    for (name, text) in SEEDS {
        let event = MessageEvent::decode(text.as_bytes()).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(event.event_type().as_str(), format!("message.{name}"));
        assert_eq!(
            event.id().to_string(),
            "123e4567-e89b-12d3-a456-426614174000"
        );
        assert_eq!(event.tenant_id(), "tenant-123");
        // The seed predates versions: such events decode but can never be indexed.
        assert_eq!(event.version(), None);
        assert_eq!(
            SearchDocument::from_event(&event),
            Err(NotIndexable::MissingVersion)
        );
        assert_eq!(MessageId::of(&event), None);
    }
}

#[test]
fn re_encoding_a_seed_keeps_every_field() {
    for (name, text) in SEEDS {
        let seed: Value = serde_json::from_str(text).unwrap();
        let ours = serde_json::to_value(MessageEvent::decode(text.as_bytes()).unwrap()).unwrap();
        assert_contains(&ours, &seed, name);
    }
}

#[test]
fn our_full_state_events_contain_every_seed_field() {
    // The events the api-server publishes: the seed's fields plus full state and a version.
    let created = json!({"type": "message.created", "payload": {
        "id": "123e4567-e89b-12d3-a456-426614174000",
        "conversationId": "123e4567-e89b-12d3-a456-426614174001",
        "senderId": "123e4567-e89b-12d3-a456-426614174002",
        "content": "Hello, world!", "tenantId": "tenant-123",
        "timestamp": "2023-08-15T10:30:00.000Z", "metadata": {"key1": "value1"}, "version": 1}});
    let updated = json!({"type": "message.updated", "payload": {
        "id": "123e4567-e89b-12d3-a456-426614174000",
        "conversationId": "123e4567-e89b-12d3-a456-426614174001",
        "senderId": "123e4567-e89b-12d3-a456-426614174002",
        "content": "Updated content", "tenantId": "tenant-123",
        "timestamp": "2023-08-15T10:30:00.000Z", "updatedAt": "2023-08-15T10:31:00.000Z",
        "metadata": {"key1": "value1", "edited": true}, "version": 2}});
    let deleted = json!({"type": "message.deleted", "payload": {
        "id": "123e4567-e89b-12d3-a456-426614174000",
        "conversationId": "123e4567-e89b-12d3-a456-426614174001",
        "tenantId": "tenant-123", "version": 3, "deletedAt": "2023-08-15T10:32:00.000Z"}});
    for ((name, text), full) in SEEDS.into_iter().zip([created, updated, deleted]) {
        let event: MessageEvent = serde_json::from_value(full.clone()).unwrap();
        let encoded: Value = serde_json::from_slice(&event.encode()).unwrap();
        // Nothing is lost or renamed between our model and the wire...
        assert_eq!(encoded, full, "{name}");
        // ...and the wire is a superset of the seed.
        assert_contains(&encoded, &serde_json::from_str(text).unwrap(), name);
        assert_eq!(
            record_key(&event).as_deref(),
            Some("123e4567-e89b-12d3-a456-426614174001")
        );
        let mid = MessageId::of(&event).unwrap();
        assert_eq!(
            mid.to_string(),
            format!(
                "123e4567-e89b-12d3-a456-426614174000:{}",
                event.version().unwrap()
            )
        );
        let doc = SearchDocument::from_event(&event).unwrap();
        assert_eq!(doc.deleted, event.event_type() == EventType::Deleted);
    }
}

//! The changes the indexer's benchmarks preload into a topic: creates of fresh messages and
//! edits of earlier ones (and deletes, for the peer benchmark), produced as the api-server's
//! relay produces them (key, headers, JSON value).
#![allow(dead_code)] // Each benchmark uses its own part of it.

use std::time::Duration;

use futures::StreamExt;
use pipeline_contract::kafka::{EventHeaders, MessageId, record_key};
use pipeline_contract::{DeletedPayload, MessageEvent, MessagePayload, Timestamp};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use uuid::Uuid;

/// Which changes besides creates.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mix {
    /// Every 4th change edits a message created earlier (the throughput benchmark's mix).
    CreatesAndEdits,
    /// As `CreatesAndEdits`, and every 10th change deletes a live message instead; a deleted
    /// message is never edited afterwards, as the api-server refuses it.
    WithDeletes,
}

/// `total` changes over `conversations`, each message's versions in order.
pub fn events(total: usize, conversations: &[Uuid], mix: Mix) -> Vec<MessageEvent> {
    let mut out = Vec::with_capacity(total);
    let mut live: Vec<MessagePayload> = Vec::new();
    for i in 0..total {
        if mix == Mix::WithDeletes && i % 10 == 9 && !live.is_empty() {
            let gone = live.swap_remove(fastrand::usize(..live.len()));
            out.push(MessageEvent::Deleted(DeletedPayload {
                id: gone.id,
                conversation_id: gone.conversation_id,
                tenant_id: gone.tenant_id,
                version: Some(gone.version.unwrap() + 1),
                deleted_at: Some(Timestamp::now()),
            }));
        } else if i % 4 == 3 && !live.is_empty() {
            let pick = fastrand::usize(..live.len());
            let s = &mut live[pick];
            s.version = Some(s.version.unwrap() + 1);
            s.content = format!("edited {i}: {}", s.content);
            s.updated_at = Some(Timestamp::now());
            out.push(MessageEvent::Updated(s.clone()));
        } else {
            let p = MessagePayload {
                id: Uuid::new_v4(),
                conversation_id: Some(conversations[i % conversations.len()]),
                sender_id: Some(Uuid::new_v4()),
                content: format!(
                    "message {i} about the quarterly planning of team {}",
                    i % 97
                ),
                tenant_id: format!("tenant-{}", i % 7),
                timestamp: Some(Timestamp::now()),
                updated_at: None,
                metadata: serde_json::json!({"channel": format!("c{}", i % 13), "priority": i % 3})
                    .as_object()
                    .unwrap()
                    .clone(),
                version: Some(1),
            };
            live.push(p.clone());
            out.push(MessageEvent::Created(p));
        }
    }
    out
}

/// The relay's headers for `event`, stamped `at`.
pub fn headers(event: &MessageEvent, at: Timestamp) -> OwnedHeaders {
    let h = EventHeaders {
        correlation_id: "bench".into(),
        message_id: MessageId::of(event).unwrap(),
        timestamp: at,
        traceparent: None,
    };
    h.pairs()
        .into_iter()
        .fold(OwnedHeaders::new(), |acc, (k, v)| {
            acc.insert(Header {
                key: k,
                value: Some(v.as_bytes()),
            })
        })
}

/// Produces every event (keyed by conversation, with its headers) and waits for each
/// acknowledgement; panics on a failed produce.
pub async fn produce_all(producer: &FutureProducer, topic: &str, events: &[MessageEvent]) {
    let sends = futures::stream::iter(events.iter().map(|e| {
        let key = record_key(e).unwrap();
        let value = e.encode();
        let headers = headers(e, e.changed_at().unwrap());
        async move {
            producer
                .send(
                    FutureRecord::to(topic)
                        .key(&key)
                        .payload(&value)
                        .headers(headers),
                    Duration::from_secs(60),
                )
                .await
                .map(|_| ())
                .map_err(|(e, _)| e)
        }
    }))
    .buffer_unordered(10_000);
    let results: Vec<_> = sends.collect().await;
    assert!(results.iter().all(Result::is_ok), "a produce failed");
}

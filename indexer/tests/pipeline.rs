//! The indexer against the rig's Kafka and OpenSearch: order-safe and idempotent indexing, a
//! replay from the earliest offset after `index.gc_deletes` has passed, and poison events in the
//! DLQ with their class while the good events around them are indexed.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{Fixture, converge, event_record, history};
use e2e::state::newest;
use e2e::{rig::rig, unique, wait};
use pipeline_contract::MessageEvent;
use pipeline_contract::dlq::{DlqHeaders, ErrorClass};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message, OwnedHeaders};
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shuffled_duplicated_events_converge_and_a_replay_after_gc_deletes_changes_nothing() {
    let fixture = Fixture::new(Some("1s")).await;
    let conversations: Vec<Uuid> = (0..5).map(|_| Uuid::new_v4()).collect();
    let mut events = Vec::new();
    for i in 0..60u64 {
        events.extend(history(conversations[(i % 5) as usize], i % 4, i % 3 == 0));
    }
    let expected = newest(&events);
    // Duplicate a third of the events, then shuffle everything: older versions arrive after newer.
    let duplicates: Vec<MessageEvent> = events.iter().step_by(3).cloned().collect();
    events.extend(duplicates);
    fastrand::shuffle(&mut events);
    let records: Vec<_> = events.iter().map(event_record).collect();
    fixture.produce(&records).await;

    let group = unique("idx-group");
    let (metrics, token, task) = fixture.start(&group);
    converge(
        &fixture,
        &expected,
        "the index to hold the newest version of every message",
    )
    .await;
    assert_eq!(metrics.dead_lettered_total(), 0, "nothing here is poison");
    token.cancel();
    task.await.unwrap();

    // Wait out index.gc_deletes (1 s), then replay the whole topic with a new group.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (metrics, token, task) = fixture.start(&unique("idx-replay"));
    wait::until(
        "the replay to consume and settle every record",
        Duration::from_secs(90),
        || async {
            let settled = metrics.indexed.get() + metrics.already_newer.get();
            (metrics.consumed.get() == records.len() as u64 && settled == records.len() as u64)
                .then_some(())
        },
    )
    .await;
    assert_eq!(
        fixture.documents().await,
        expected,
        "a replay regressed or resurrected a document"
    );
    assert_eq!(
        metrics.indexed.get(),
        0,
        "every replayed event should be refused as already newer"
    );
    token.cancel();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_events_go_to_the_dlq_with_their_class_and_the_rest_is_indexed() {
    let fixture = Fixture::new(None).await;
    let conversation = Uuid::new_v4();
    let good_before = history(conversation, 0, false).remove(0);
    let good_after = history(conversation, 1, false).pop().unwrap();
    let mut missing_version = history(conversation, 0, false).remove(0);
    if let MessageEvent::Created(p) = &mut missing_version {
        p.version = None;
    }
    let mut immense = history(conversation, 0, false).remove(0);
    if let MessageEvent::Created(p) = &mut immense {
        // A keyword term longer than Lucene's 32766-byte limit: the engine refuses the document.
        p.tenant_id = "t".repeat(40_000);
    }
    let key = Some(conversation.to_string());
    let plain = |value: &[u8]| (key.clone(), value.to_vec(), OwnedHeaders::new());
    let records = vec![
        event_record(&good_before),
        plain(b"{not json"),
        plain(br#"{"type":"message.pinned","payload":{}}"#),
        (key.clone(), missing_version.encode(), OwnedHeaders::new()),
        event_record(&immense),
        event_record(&good_after),
    ];
    fixture.produce(&records).await;

    let (metrics, token, task) = fixture.start(&unique("idx-group"));
    let expected = HashMap::from([
        (good_before.id(), (1, false)),
        (good_after.id(), (2, false)),
    ]);
    converge(&fixture, &expected, "the good events to be indexed").await;

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", rig().kafka())
        .set("group.id", unique("dlq-reader"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[&fixture.dlq]).unwrap();
    // Dead letters of one batch are written by concurrent lanes, so their DLQ order is not the
    // topic's: match each to its source offset instead.
    let mut classes = std::collections::BTreeMap::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while classes.len() < 4 {
        assert!(
            std::time::Instant::now() < deadline,
            "only {classes:?} reached the DLQ"
        );
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = message.unwrap();
        let headers: Vec<(&str, Option<&[u8]>)> = message
            .headers()
            .map(|h| h.iter().map(|h| (h.key, h.value)).collect())
            .unwrap_or_default();
        let dlq = DlqHeaders::parse(headers).expect("DLQ headers");
        assert_eq!(dlq.source_topic, fixture.topic);
        assert_eq!(
            message.key(),
            Some(conversation.to_string().as_bytes()),
            "the original key is kept"
        );
        assert_eq!(
            records[dlq.source_offset as usize].1,
            message.payload().unwrap(),
            "the original value is kept"
        );
        classes.insert(dlq.source_offset, dlq.error_class);
    }
    assert_eq!(
        classes,
        std::collections::BTreeMap::from([
            (1, ErrorClass::Undecodable),
            (2, ErrorClass::UnknownType),
            (3, ErrorClass::MissingVersion),
            (4, ErrorClass::MappingRejected),
        ])
    );
    assert_eq!(metrics.dead_lettered_total(), 4);
    token.cancel();
    task.await.unwrap();
    drop(consumer);
}

//! `indexer dlq inspect|replay` against the rig's Kafka (and OpenSearch for the end-to-end case):
//! counts and spans by class, a class-filtered replay with the re-drive count incremented and the
//! DLQ headers gone, the tombstone horizon enforced unless forced, and a dead letter re-driven
//! while an indexer runs ending up in the index.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::Fixture;
use e2e::{rig::rig, unique, wait};
use indexer::config::KafkaArgs;
use indexer::dlq::DlqWriter;
use indexer::dlq_tools::{self, DlqToolError, EXIT_REFUSED, Selection, TopicReader};
use indexer::record::ConsumedRecord;
use pipeline_contract::dlq::{DlqHeaders, ErrorClass, header};
use pipeline_contract::kafka::{EventHeaders, MessageId, record_key};
use pipeline_contract::kafka_client;
use pipeline_contract::kafka_client::Connection;
use pipeline_contract::kafka_client::Refusals;
use pipeline_contract::{MessageEvent, MessagePayload, Timestamp};
use rdkafka::ClientConfig;
use rdkafka::producer::FutureRecord;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const MINUTE: i64 = 60 * 1000;
const DAY: i64 = 24 * 60 * MINUTE;

/// An events topic and its DLQ, unique to one test.
struct Topics {
    topic: String,
    dlq: String,
}

impl Topics {
    async fn new(event_partitions: i32) -> Self {
        let (topic, dlq) = common::events_and_dlq("dlqt-events", event_partitions).await;
        Self { topic, dlq }
    }

    fn kafka(&self) -> KafkaArgs {
        KafkaArgs {
            connection: Connection::plaintext(rig().kafka()),
            topic: self.topic.clone(),
            dlq_topic: Some(self.dlq.clone()),
        }
    }

    /// Every record of the events topic up to its current end.
    async fn events(&self) -> Vec<ConsumedRecord> {
        read_all(&self.topic).await
    }
}

async fn read_all(topic: &str) -> Vec<ConsumedRecord> {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", rig().kafka());
    let mut reader = TopicReader::open(config, topic.to_owned());
    let mut records = Vec::new();
    while let Some(record) = reader.next().await {
        records.push(record);
    }
    reader.finish().await.expect("read to the end");
    records
}

fn at(millis: i64) -> Timestamp {
    Timestamp::from_millis(millis).unwrap()
}

fn owned(pairs: &[(&str, String)]) -> Vec<(String, Option<Vec<u8>>)> {
    pairs
        .iter()
        .map(|(n, v)| ((*n).to_owned(), Some(v.clone().into_bytes())))
        .collect()
}

/// An original record as the DLQ writer receives it.
fn original(key: &str, value: &[u8], headers: &[(&str, String)]) -> ConsumedRecord {
    ConsumedRecord {
        partition: 0,
        offset: 0,
        key: Some(key.as_bytes().to_vec()),
        payload: Some(value.to_vec()),
        headers: owned(headers),
    }
}

fn dlq_headers(
    topic: &str,
    class: ErrorClass,
    first_failure: Timestamp,
    redrive_count: u32,
) -> DlqHeaders {
    DlqHeaders {
        source_topic: topic.to_owned(),
        source_partition: 0,
        source_offset: 0,
        error_class: class,
        error_message: format!("{class} for the test"),
        attempts: 1,
        first_failure,
        redrive_count,
    }
}

/// Produces a record exactly as given (for dead letters the DLQ writer would not write).
async fn produce_raw(topic: &str, key: &str, value: &[u8], headers: &[(&str, String)]) {
    let producer = e2e::kafka::producer();
    let owned = kafka_client::headers(headers.iter().map(|(name, value)| (name, Some(value))));
    producer
        .send(
            FutureRecord::to(topic)
                .key(key)
                .payload(value)
                .headers(owned),
            Duration::from_secs(10),
        )
        .await
        .expect("produce");
}

fn event_headers(message: &str, changed_at: Timestamp) -> Vec<(&'static str, String)> {
    vec![
        ("correlation-id", format!("corr-{message}")),
        ("message-id", format!("{}:1", Uuid::new_v4())),
        ("timestamp", changed_at.to_string()),
    ]
}

fn header<'a>(record: &'a ConsumedRecord, name: &str) -> Option<&'a str> {
    record.header(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_counts_by_class_and_replay_redrives_only_the_selected_within_the_horizon() {
    let topics = Topics::new(1).await;
    let kafka = topics.kafka();
    let writer = DlqWriter::new(
        kafka.connection.client_config(),
        topics.dlq.clone(),
        Refusals::new(&kafka.connection.bootstrap_servers),
    )
    .unwrap();
    let token = CancellationToken::new();
    let now = Timestamp::now().timestamp_millis();

    // DLQ offset 0: undecodable, no original headers at all.
    let undecodable = original("k0", b"{not json", &[]);
    writer
        .write(
            &undecodable,
            &dlq_headers(
                &topics.topic,
                ErrorClass::Undecodable,
                at(now - 180 * MINUTE),
                0,
            ),
            &token,
        )
        .await
        .unwrap();
    // 1: mapping-rejected.
    let rejected = original(
        "k1",
        b"{\"v\":1}",
        &event_headers("1", at(now - 121 * MINUTE)),
    );
    writer
        .write(
            &rejected,
            &dlq_headers(
                &topics.topic,
                ErrorClass::MappingRejected,
                at(now - 120 * MINUTE),
                0,
            ),
            &token,
        )
        .await
        .unwrap();
    // 2: retries-exhausted without a dlq-redrive-count header (an older writer's record).
    let first_headers = event_headers("2", at(now - 61 * MINUTE));
    let mut raw = first_headers.clone();
    raw.extend(
        dlq_headers(
            &topics.topic,
            ErrorClass::RetriesExhausted,
            at(now - 60 * MINUTE),
            0,
        )
        .pairs()
        .into_iter()
        .filter(|(n, _)| *n != header::REDRIVE_COUNT),
    );
    produce_raw(&topics.dlq, "k2", b"{\"v\":2}", &raw).await;
    // 3: retries-exhausted, already re-driven twice.
    let twice_headers = event_headers("3", at(now - 40 * MINUTE));
    let twice = original("k3", b"{\"v\":3}", &twice_headers);
    writer
        .write(
            &twice,
            &dlq_headers(
                &topics.topic,
                ErrorClass::RetriesExhausted,
                at(now - 30 * MINUTE),
                2,
            ),
            &token,
        )
        .await
        .unwrap();
    // 4: retries-exhausted, but the change is 30 days old: beyond the 21-day horizon.
    let ancient = original("k4", b"{\"v\":4}", &event_headers("4", at(now - 30 * DAY)));
    writer
        .write(
            &ancient,
            &dlq_headers(
                &topics.topic,
                ErrorClass::RetriesExhausted,
                at(now - 10 * MINUTE),
                0,
            ),
            &token,
        )
        .await
        .unwrap();
    // 5: not a dead letter at all.
    produce_raw(
        &topics.dlq,
        "k5",
        b"stray",
        &[("message-id", "x".to_owned())],
    )
    .await;
    // 6: mapping-rejected again, the newest failure.
    let rejected_again = original(
        "k6",
        b"{\"v\":6}",
        &event_headers("6", at(now - 6 * MINUTE)),
    );
    writer
        .write(
            &rejected_again,
            &dlq_headers(
                &topics.topic,
                ErrorClass::MappingRejected,
                at(now - 5 * MINUTE),
                0,
            ),
            &token,
        )
        .await
        .unwrap();

    let inspection = dlq_tools::inspect(&kafka).await.expect("inspect");
    assert_eq!((inspection.total, inspection.unreadable), (7, 1));
    let summary = |class| {
        let s = inspection.classes[&class];
        (s.count, s.oldest, s.newest)
    };
    assert_eq!(
        summary(ErrorClass::Undecodable),
        (1, at(now - 180 * MINUTE), at(now - 180 * MINUTE))
    );
    assert_eq!(
        summary(ErrorClass::MappingRejected),
        (2, at(now - 120 * MINUTE), at(now - 5 * MINUTE))
    );
    assert_eq!(
        summary(ErrorClass::RetriesExhausted),
        (3, at(now - 60 * MINUTE), at(now - 10 * MINUTE))
    );
    assert_eq!(inspection.classes.len(), 3);
    assert_eq!(
        inspection.span(),
        Some((at(now - 180 * MINUTE), at(now - 5 * MINUTE)))
    );

    let selection = Selection {
        classes: BTreeSet::from([ErrorClass::RetriesExhausted]),
        from_offset: None,
        to_offset: None,
        horizon_days: 21,
        force: false,
        now: Timestamp::now(),
    };

    // A dry run decides the same and sends nothing.
    let dry = dlq_tools::replay(&kafka, &selection, true)
        .await
        .expect("dry run");
    assert!(dry.dry_run);
    assert_eq!((dry.redriven(), dry.skipped(), dry.refused()), (2, 3, 1));
    assert!(topics.events().await.is_empty(), "a dry run sent something");

    let done = dlq_tools::replay(&kafka, &selection, false)
        .await
        .expect("replay");
    assert_eq!((done.redriven(), done.skipped(), done.refused()), (2, 3, 1));
    assert_eq!(done.unreadable, 1);
    assert_eq!(done.exit_code(), EXIT_REFUSED);
    let retries = &done.classes[&ErrorClass::RetriesExhausted];
    assert_eq!((retries.redriven, retries.refused), (2, 1));
    let reason = retries.first_refusal.as_deref().unwrap();
    assert!(
        reason.contains("offset 4") && reason.contains("--force"),
        "{reason}"
    );

    let events = topics.events().await;
    assert_eq!(events.len(), 2, "exactly the selected records: {events:?}");
    let expected = [
        ("k2", &b"{\"v\":2}"[..], &first_headers, "1"),
        ("k3", &b"{\"v\":3}"[..], &twice_headers, "3"),
    ];
    for (record, (key, value, original_headers, count)) in events.iter().zip(expected) {
        assert_eq!(record.key.as_deref(), Some(key.as_bytes()), "original key");
        assert_eq!(record.payload.as_deref(), Some(value), "original value");
        assert_eq!(header(record, header::REDRIVE_COUNT), Some(count), "{key}");
        let dlq_names: Vec<_> = record
            .headers
            .iter()
            .filter(|(n, _)| n.starts_with("dlq-"))
            .map(|(n, _)| n.as_str())
            .collect();
        assert_eq!(
            dlq_names,
            [header::REDRIVE_COUNT],
            "{key}: only the redrive count"
        );
        let others: Vec<_> = record
            .headers
            .iter()
            .filter(|(n, _)| !n.starts_with("dlq-"))
            .cloned()
            .collect();
        assert_eq!(
            others,
            owned(original_headers),
            "{key}: original headers kept"
        );
    }

    // With --force, the record beyond the horizon goes too; the offset window picks only it.
    let forced = Selection {
        force: true,
        from_offset: Some(4),
        to_offset: Some(5),
        ..selection
    };
    let done = dlq_tools::replay(&kafka, &forced, false)
        .await
        .expect("forced replay");
    assert_eq!((done.redriven(), done.refused()), (1, 0));
    assert_eq!(done.exit_code(), 0);
    let events = topics.events().await;
    assert_eq!(events.len(), 3);
    assert_eq!(events[2].key.as_deref(), Some(&b"k4"[..]));
    assert_eq!(events[2].payload, ancient.payload);
    assert_eq!(header(&events[2], header::REDRIVE_COUNT), Some("1"));

    // A replay never deletes from the DLQ.
    assert_eq!(dlq_tools::inspect(&kafka).await.unwrap().total, 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_redriven_while_the_indexer_runs_gets_indexed() {
    let fixture = Fixture::new(None).await;

    // A valid event, dead-lettered as if the engine had been overloaded when it first came by.
    let conversation = Uuid::new_v4();
    let event = MessageEvent::Created(MessagePayload {
        id: Uuid::new_v4(),
        conversation_id: Some(conversation),
        sender_id: Some(Uuid::new_v4()),
        content: "overloaded the first time".into(),
        tenant_id: "tenant-a".into(),
        timestamp: Some(Timestamp::now()),
        updated_at: None,
        metadata: serde_json::Map::new(),
        version: Some(1),
    });
    let headers = EventHeaders {
        correlation_id: "test".into(),
        message_id: MessageId::of(&event).unwrap(),
        timestamp: event.changed_at().unwrap(),
        traceparent: None,
    };
    let record = ConsumedRecord {
        partition: 1,
        offset: 17,
        key: record_key(&event).map(String::into_bytes),
        payload: Some(event.encode()),
        headers: headers
            .pairs()
            .into_iter()
            .map(|(n, v)| (n.to_owned(), Some(v.into_bytes())))
            .collect(),
    };
    let kafka = fixture.args("unused").kafka;
    let writer = DlqWriter::new(
        kafka.connection.client_config(),
        fixture.dlq.clone(),
        Refusals::new(&kafka.connection.bootstrap_servers),
    )
    .unwrap();
    let dlq = DlqHeaders {
        source_topic: fixture.topic.clone(),
        source_partition: record.partition,
        source_offset: record.offset,
        error_class: ErrorClass::RetriesExhausted,
        error_message: "429 es_rejected_execution_exception".into(),
        attempts: 5,
        first_failure: Timestamp::now(),
        redrive_count: 0,
    };
    writer
        .write(&record, &dlq, &CancellationToken::new())
        .await
        .unwrap();

    let (metrics, token, task) = fixture.start(&unique("dlqt-group"));
    assert_eq!(
        fixture.documents().await.get(&event.id()).map(|d| d.0),
        None
    );

    let selection = every_class_now();
    let summary = dlq_tools::replay(&kafka, &selection, false)
        .await
        .expect("replay");
    assert_eq!((summary.redriven(), summary.exit_code()), (1, 0));
    wait::until(
        "the re-driven event to be indexed",
        Duration::from_secs(90),
        || async {
            (fixture.documents().await.get(&event.id()).map(|d| d.0) == Some(1)).then_some(())
        },
    )
    .await;

    // Re-running selects it again (the DLQ keeps it); the external version makes that harmless.
    let again = dlq_tools::replay(&kafka, &selection, false)
        .await
        .expect("second replay");
    assert_eq!(again.redriven(), 1);
    wait::until(
        "the second re-drive to be settled as already applied",
        Duration::from_secs(90),
        || async { (metrics.already_newer.get() >= 1).then_some(()) },
    )
    .await;
    assert_eq!(metrics.indexed.get(), 1);
    assert_eq!(
        fixture.documents().await.get(&event.id()).map(|d| d.0),
        Some(1)
    );
    assert_eq!(
        metrics.dead_lettered_total(),
        0,
        "the re-driven record failed again"
    );
    token.cancel();
    task.await.unwrap();
}

/// Every class, every offset, within a 21-day horizon, as of now.
fn every_class_now() -> Selection {
    Selection {
        classes: BTreeSet::new(),
        from_offset: None,
        to_offset: None,
        horizon_days: 21,
        force: false,
        now: Timestamp::now(),
    }
}

/// `indexer dlq` on the secured listener as `mp-<principal>` (devstack/kafka/acls).
fn secured(topics: &Topics, principal: &str) -> KafkaArgs {
    KafkaArgs {
        connection: Connection {
            bootstrap_servers: rig().kafka_secure().to_owned(),
            security_protocol: Some("sasl_ssl".into()),
            sasl_mechanism: Some("SCRAM-SHA-512".into()),
            sasl_username: Some(format!("mp-{principal}")),
            sasl_password: Some(rig().kafka_password(principal).to_owned()),
            ssl_ca_location: Some(rig().ca_cert().to_owned()),
        },
        ..topics.kafka()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_runs_as_its_own_principal_and_the_indexers_may_not_replay() {
    let id = unique("r");
    let topics = Topics {
        topic: format!("secure-events-{id}"),
        dlq: format!("secure-dlq-{id}"),
    };
    e2e::kafka::create_topics(&[(&topics.topic, 1), (&topics.dlq, 1)]).await;
    let mut headers = event_headers("m-1:1", Timestamp::now());
    headers.extend(
        dlq_headers(
            &topics.topic,
            ErrorClass::RetriesExhausted,
            Timestamp::now(),
            0,
        )
        .pairs(),
    );
    produce_raw(&topics.dlq, "k1", b"{\"v\":1}", &headers).await;
    let selection = every_class_now();
    // The indexer's principal writes the DLQ but may not read it.
    let refused = dlq_tools::replay(&secured(&topics, "indexer"), &selection, false)
        .await
        .expect_err("mp-indexer may not read the DLQ");
    let DlqToolError::Refused(refused) = refused else {
        panic!("not a refusal: {refused}");
    };
    assert_eq!(
        refused.refusal.reason(),
        "KafkaAuthorizationFailed",
        "{refused}"
    );
    assert!(topics.events().await.is_empty());
    let done = dlq_tools::replay(&secured(&topics, "replay"), &selection, false)
        .await
        .expect("a replay as mp-replay");
    assert_eq!(done.redriven(), 1);
    let events = topics.events().await;
    assert_eq!(events.len(), 1);
    assert_eq!(header(&events[0], header::REDRIVE_COUNT), Some("1"));
}

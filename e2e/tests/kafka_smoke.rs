//! The rig's Kafka does what the pipeline relies on: explicit topics with settings, keyed records
//! with headers, group consumption with commits that survive a re-join, no auto-creation.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use e2e::{rig::rig, unique};
use pipeline_contract::kafka::{DEFAULT_RETENTION_MS, header};
use rdkafka::Offset;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

const PARTITIONS: i32 = 3;

fn config() -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", rig().kafka());
    c
}

fn admin() -> AdminClient<DefaultClientContext> {
    config().create().expect("admin client")
}

fn producer() -> FutureProducer {
    e2e::kafka::producer_config()
        .set("message.timeout.ms", "15000")
        .create()
        .expect("producer")
}

fn consumer(group: &str) -> BaseConsumer {
    config()
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .create()
        .expect("consumer")
}

async fn create_topic(name: &str) {
    let retention = DEFAULT_RETENTION_MS.to_string();
    let topic =
        NewTopic::new(name, PARTITIONS, TopicReplication::Fixed(1)).set("retention.ms", &retention);
    let results = admin()
        .create_topics([&topic], &AdminOptions::new())
        .await
        .expect("create_topics");
    assert_eq!(results, vec![Ok(name.to_owned())]);
}

async fn delete_topic(name: &str) {
    let _ = admin().delete_topics(&[name], &AdminOptions::new()).await;
}

/// One received record, owned.
#[derive(Debug, Clone)]
struct Received {
    key: String,
    partition: i32,
    offset: i64,
    headers: HashMap<String, String>,
}

/// The next record, polling with a deadline.
fn receive(consumer: &BaseConsumer) -> Received {
    let deadline = Instant::now() + Duration::from_secs(30);
    let msg = loop {
        if let Some(result) = consumer.poll(Duration::from_millis(200)) {
            break result.expect("consumer error");
        }
        assert!(Instant::now() < deadline, "no record within 30 s");
    };
    let headers = msg
        .headers()
        .map(|h| {
            h.iter()
                .map(|Header { key, value }| {
                    (
                        key.to_owned(),
                        String::from_utf8_lossy(value.unwrap_or_default()).into_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    Received {
        key: String::from_utf8_lossy(msg.key().unwrap_or_default()).into_owned(),
        partition: msg.partition(),
        offset: msg.offset(),
        headers,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_is_created_with_partitions_and_retention() {
    let topic = unique("smoke-topic");
    create_topic(&topic).await;

    let metadata = admin()
        .inner()
        .fetch_metadata(Some(&topic), Duration::from_secs(10))
        .expect("metadata");
    assert_eq!(metadata.topics()[0].partitions().len(), PARTITIONS as usize);

    let configs = admin()
        .describe_configs([&ResourceSpecifier::Topic(&topic)], &AdminOptions::new())
        .await
        .expect("describe_configs");
    let resource = configs.into_iter().next().unwrap().expect("topic config");
    let retention = resource.get("retention.ms").and_then(|e| e.value.clone());
    assert_eq!(retention, Some(DEFAULT_RETENTION_MS.to_string()));

    // Creating it again is refused: topics are created exactly once, explicitly.
    let again = admin()
        .create_topics(
            [&NewTopic::new(
                &topic,
                PARTITIONS,
                TopicReplication::Fixed(1),
            )],
            &AdminOptions::new(),
        )
        .await
        .unwrap();
    assert_eq!(
        again,
        vec![Err((topic.clone(), RDKafkaErrorCode::TopicAlreadyExists))]
    );
    delete_topic(&topic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_records_with_headers_are_consumed_once_per_group() {
    let topic = unique("smoke-events");
    let group = unique("smoke-group");
    create_topic(&topic).await;
    let producer = producer();

    // 30 records over 6 keys: every key must land on exactly one partition, in order.
    let mut sent = Vec::new();
    for i in 0..30 {
        let key = format!("conversation-{}", i % 6);
        let message_id = format!("{}:{}", uuid::Uuid::new_v4(), i + 1);
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: header::CORRELATION_ID,
                value: Some(format!("corr-{i}").as_str()),
            })
            .insert(Header {
                key: header::MESSAGE_ID,
                value: Some(message_id.as_str()),
            })
            .insert(Header {
                key: header::TIMESTAMP,
                value: Some("2026-11-27T10:00:00.000Z"),
            });
        let record = FutureRecord::to(&topic)
            .key(&key)
            .payload("{}")
            .headers(headers);
        let delivery = producer
            .send(record, Duration::from_secs(10))
            .await
            .expect("delivery");
        sent.push((key, message_id, delivery.partition, delivery.offset));
    }

    let first = consumer(&group);
    first.subscribe(&[&topic]).unwrap();
    let mut received = Vec::new();
    for _ in 0..sent.len() {
        received.push(receive(&first));
    }
    let mut key_partitions: HashMap<String, HashSet<i32>> = HashMap::new();
    for r in &received {
        key_partitions
            .entry(r.key.clone())
            .or_default()
            .insert(r.partition);
        let (key, message_id, partition, offset) = sent
            .iter()
            .find(|(_, _, p, o)| *p == r.partition && *o == r.offset)
            .expect("a record that was sent");
        assert_eq!(&r.key, key);
        assert_eq!(r.partition, *partition);
        assert_eq!(r.offset, *offset);
        assert_eq!(r.headers.get(header::MESSAGE_ID), Some(message_id));
        assert!(
            r.headers
                .get(header::CORRELATION_ID)
                .is_some_and(|c| c.starts_with("corr-"))
        );
        assert_eq!(
            r.headers.get(header::TIMESTAMP).map(String::as_str),
            Some("2026-11-27T10:00:00.000Z")
        );
    }
    assert!(
        key_partitions.values().all(|p| p.len() == 1),
        "a key spread over partitions: {key_partitions:?}"
    );
    let offsets: HashSet<(i32, i64)> = received.iter().map(|r| (r.partition, r.offset)).collect();
    assert_eq!(offsets.len(), sent.len(), "a record was delivered twice");

    first
        .commit_consumer_state(CommitMode::Sync)
        .expect("commit");
    let committed = first
        .committed(Duration::from_secs(10))
        .expect("committed offsets");
    for p in 0..PARTITIONS {
        let end = sent
            .iter()
            .filter(|s| s.2 == p)
            .map(|s| s.3 + 1)
            .max()
            .unwrap_or(0);
        let got = committed.find_partition(&topic, p).map(|e| e.offset());
        if end > 0 {
            assert_eq!(got, Some(Offset::Offset(end)), "partition {p}");
        }
    }
    // The list holds references into the client: librdkafka cannot destroy the consumer until it
    // is gone, so it must be dropped first or the consumer's drop blocks forever.
    drop(committed);
    drop(first);

    // Re-join the group: nothing before the committed offsets may come again. A marker on every
    // partition proves the new member reads each partition; anything before a marker is a
    // re-delivery.
    let second = consumer(&group);
    second.subscribe(&[&topic]).unwrap();
    for p in 0..PARTITIONS {
        let record = FutureRecord::to(&topic)
            .key("marker")
            .payload("marker")
            .partition(p);
        producer
            .send(record, Duration::from_secs(10))
            .await
            .expect("marker delivery");
    }
    let mut markers = HashSet::new();
    while markers.len() < PARTITIONS as usize {
        let r = receive(&second);
        assert_eq!(
            r.key, "marker",
            "re-delivered after commit and re-join: {r:?}"
        );
        markers.insert(r.partition);
    }
    drop(second);
    delete_topic(&topic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producing_to_a_missing_topic_fails_and_creates_nothing() {
    let topic = unique("smoke-missing");
    let producer: FutureProducer = config()
        .set("message.timeout.ms", "20000")
        .set("topic.metadata.propagation.max.ms", "2000")
        .create()
        .unwrap();
    let result = producer
        .send(
            FutureRecord::to(&topic).key("k").payload("v"),
            Duration::from_secs(5),
        )
        .await;
    match result {
        Err((KafkaError::MessageProduction(code), _)) => assert!(
            matches!(
                code,
                RDKafkaErrorCode::UnknownTopic | RDKafkaErrorCode::UnknownTopicOrPartition
            ),
            "unexpected error code {code:?}"
        ),
        other => {
            panic!("producing to a missing topic should fail with unknown topic, got {other:?}")
        }
    }

    // Auto-creation is off: the attempt left no topic behind.
    let metadata = admin()
        .inner()
        .fetch_metadata(None, Duration::from_secs(10))
        .expect("metadata");
    assert!(
        metadata.topics().iter().all(|t| t.name() != topic),
        "the broker auto-created {topic}"
    );
}

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use pipeline_contract::kafka_client;
use rdkafka::producer::FutureProducer;

use crate::rig::rig;

/// Creates `topic` with `partitions` partitions (replication 1, as the rig has one broker).
pub async fn create_topic(topic: &str, partitions: i32) {
    create_topics(&[(topic, partitions)]).await;
}

/// Creates each `(topic, partitions)` (replication 1, as the rig has one broker); panics with
/// the broker's reason when one cannot be created.
pub async fn create_topics(topics: &[(&str, i32)]) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", rig().kafka())
        .create()
        .expect("admin client");
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|(name, partitions)| NewTopic::new(name, *partitions, TopicReplication::Fixed(1)))
        .collect();
    let results = admin
        .create_topics(&new, &AdminOptions::new())
        .await
        .expect("create_topics");
    for result in results {
        result.expect("topic created");
    }
}

/// The configuration of a producer to the rig's Kafka as the workers make theirs: the
/// connection, idempotent, acknowledged by every in-sync replica. A test adds its own settings.
pub fn producer_config() -> ClientConfig {
    kafka_client::idempotent(kafka_client::Connection::plaintext(rig().kafka()).client_config())
}

/// An idempotent producer to the rig's Kafka ([`producer_config`]).
pub fn producer() -> FutureProducer {
    producer_config().create().expect("producer")
}

fn client() -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", rig().kafka())
        .create()
        .expect("consumer")
}

/// The ids of `topic`'s partitions. Right after a broker restart leaders may not be known yet:
/// retries for up to 30 s.
pub fn partitions(topic: &str) -> Vec<i32> {
    let client = client();
    let retry_until = Instant::now() + Duration::from_secs(30);
    loop {
        let error = match client.fetch_metadata(Some(topic), Duration::from_secs(10)) {
            Ok(m) if !m.topics()[0].partitions().is_empty() => {
                return m.topics()[0].partitions().iter().map(|p| p.id()).collect();
            }
            Ok(_) => "no partitions".to_owned(),
            Err(e) => e.to_string(),
        };
        assert!(Instant::now() < retry_until, "metadata of {topic}: {error}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `topic`'s end offsets summed over its partitions.
pub fn end_offsets_total(topic: &str) -> i64 {
    let client = client();
    partitions(topic)
        .into_iter()
        .map(|p| {
            client
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .expect("watermarks")
                .1
        })
        .sum()
}

/// `group`'s committed offsets on `topic` summed over its partitions (none committed counts 0).
pub fn committed_total(group: &str, topic: &str) -> i64 {
    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", rig().kafka())
        .set("group.id", group)
        .create()
        .expect("consumer");
    let mut list = TopicPartitionList::new();
    for p in partitions(topic) {
        list.add_partition(topic, p);
    }
    let committed = reader
        .committed_offsets(list, Duration::from_secs(10))
        .expect("committed offsets");
    let total = committed
        .elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(o) => o,
            _ => 0,
        })
        .sum();
    // The list holds references into the client: drop it before the client.
    drop(committed);
    total
}

/// One record as read back.
#[derive(Debug, Clone)]
pub struct TopicRecord {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    pub payload: Vec<u8>,
    pub headers: HashMap<String, String>,
}

/// Every record of `topic` from the beginning to the end offsets as of the call, in partition
/// then offset order. Reads without a consumer group, so it disturbs nobody.
pub fn read_topic(topic: &str) -> Vec<TopicRecord> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", rig().kafka())
        .set("enable.auto.commit", "false")
        .set("group.id", crate::unique("e2e-reader"))
        .create()
        .expect("consumer");
    let timeout = Duration::from_secs(10);
    let retry_until = Instant::now() + Duration::from_secs(30);
    let retry = |what: &str, error: rdkafka::error::KafkaError| {
        assert!(Instant::now() < retry_until, "{what} of {topic}: {error}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let partitions = partitions(topic);
    let mut ends = HashMap::new();
    let mut assignment = TopicPartitionList::new();
    for &p in &partitions {
        let (low, high) = loop {
            match consumer.fetch_watermarks(topic, p, timeout) {
                Ok(w) => break w,
                Err(e) => retry("watermarks", e),
            }
        };
        if high > low {
            ends.insert(p, high);
            assignment
                .add_partition_offset(topic, p, Offset::Beginning)
                .expect("partition");
        }
    }
    let mut records = Vec::new();
    if ends.is_empty() {
        return records;
    }
    consumer.assign(&assignment).expect("assign");
    drop(assignment);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut done: HashMap<i32, bool> = ends.keys().map(|&p| (p, false)).collect();
    while done.values().any(|d| !d) {
        assert!(Instant::now() < deadline, "reading {topic} timed out");
        let Some(result) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = result.expect("consume");
        let p = message.partition();
        if message.offset() >= ends[&p] {
            continue;
        }
        if message.offset() + 1 >= ends[&p] {
            done.insert(p, true);
        }
        let headers = message
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| {
                        (
                            h.key.to_owned(),
                            String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        records.push(TopicRecord {
            partition: p,
            offset: message.offset(),
            key: message
                .key()
                .map(|k| String::from_utf8_lossy(k).into_owned()),
            payload: message.payload().unwrap_or_default().to_vec(),
            headers,
        });
    }
    records.sort_by_key(|r| (r.partition, r.offset));
    records
}

/// Whether the broker knows `topic` (metadata without auto-creation).
pub fn topic_exists(topic: &str) -> bool {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", rig().kafka())
        .set("allow.auto.create.topics", "false")
        .create()
        .expect("consumer");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("topic metadata");
    metadata
        .topics()
        .iter()
        .any(|t| t.name() == topic && t.error().is_none())
}

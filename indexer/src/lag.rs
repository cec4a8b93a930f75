//! Waits out the pipeline's current lag: until every change MongoDB took before a moment is on
//! Kafka (the relay's lowest watermark has passed it) and the indexer's group has committed
//! past every record on the topic then. What the audit sees after that wait is not a change in
//! flight.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use pipeline_contract::kafka_client::{Connection, Refusals};
use pipeline_contract::time::Timestamp;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use crate::stored::{Stored, StoredError};

const POLL: Duration = Duration::from_millis(250);
const KAFKA_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the lag could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LagError {
    #[error(transparent)]
    Stored(#[from] StoredError),
    #[error("{0}")]
    Refused(pipeline_contract::access::Refused),
    #[error("reading the offsets of {topic} (group {group:?}): {source}")]
    Kafka {
        topic: String,
        group: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
}

/// What the wait found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    Yes,
    /// The deadline passed first; the part that had not caught up.
    No(&'static str),
}

/// The relay and the indexer's group of one pipeline.
pub struct Lag {
    stored: Stored,
    connection: Connection,
    topic: String,
    group: String,
}

impl std::fmt::Debug for Lag {
    // Not derived: the connection holds the SASL password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lag")
            .field("topic", &self.topic)
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

impl Lag {
    pub fn new(stored: Stored, connection: Connection, topic: String, group: String) -> Self {
        Self {
            stored,
            connection,
            topic,
            group,
        }
    }

    /// Waits until every change before `since` is applied by the indexer's group, at most
    /// `timeout`.
    pub async fn settle(&self, since: Timestamp, timeout: Duration) -> Result<Settled, LagError> {
        let deadline = Instant::now() + timeout;
        let since = since.timestamp_millis();
        while self.stored.watermark().await?.is_some_and(|w| w < since) {
            if Instant::now() >= deadline {
                return Ok(Settled::No("the relay's watermark"));
            }
            tokio::time::sleep(POLL).await;
        }
        let ends = self.offsets(Read::Ends).await?;
        loop {
            let committed = self.offsets(Read::Committed).await?;
            let behind = ends
                .iter()
                .any(|(p, end)| committed.get(p).copied().unwrap_or(0) < *end);
            if !behind {
                return Ok(Settled::Yes);
            }
            if Instant::now() >= deadline {
                return Ok(Settled::No("the indexer's consumer group"));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn offsets(&self, read: Read) -> Result<BTreeMap<i32, i64>, LagError> {
        let mut config = self.connection.client_config();
        // Never joined (no subscribe): the group is named to read its committed offsets.
        config
            .set("group.id", &self.group)
            .set("enable.auto.commit", "false");
        offsets(config, &self.topic, read)
            .await
            .map_err(|e| match e {
                LagError::Kafka { topic, source, .. } => LagError::Kafka {
                    topic,
                    group: self.group.clone(),
                    source,
                },
                other => other,
            })
    }
}

/// The end offset of every partition of `topic` now.
pub async fn end_offsets(
    config: rdkafka::ClientConfig,
    topic: &str,
) -> Result<BTreeMap<i32, i64>, LagError> {
    offsets(config, topic, Read::Ends).await
}

async fn offsets(
    config: rdkafka::ClientConfig,
    topic: &str,
    read: Read,
) -> Result<BTreeMap<i32, i64>, LagError> {
    let endpoint = config
        .get("bootstrap.servers")
        .unwrap_or_default()
        .to_owned();
    let owned = topic.to_owned();
    let result = tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer<Refusals> =
            config.create_with_context(Refusals::new(&endpoint))?;
        let outcome = read_offsets(&consumer, &owned, read);
        let refused = consumer.context().current();
        Ok::<_, rdkafka::error::KafkaError>((outcome, refused))
    })
    .await
    .expect("the offsets read does not panic");
    match result {
        Ok((_, Some(refused))) => Err(LagError::Refused(refused)),
        Ok((Ok(offsets), None)) => Ok(offsets),
        Ok((Err(source), None)) | Err(source) => Err(LagError::Kafka {
            topic: topic.to_owned(),
            group: String::new(),
            source,
        }),
    }
}

#[derive(Debug, Clone, Copy)]
enum Read {
    Ends,
    Committed,
}

fn read_offsets(
    consumer: &BaseConsumer<Refusals>,
    topic: &str,
    read: Read,
) -> Result<BTreeMap<i32, i64>, rdkafka::error::KafkaError> {
    let metadata = consumer.fetch_metadata(Some(topic), KAFKA_TIMEOUT)?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    let mut offsets = BTreeMap::new();
    match read {
        Read::Ends => {
            for p in partitions {
                let (_, high) = consumer.fetch_watermarks(topic, p, KAFKA_TIMEOUT)?;
                offsets.insert(p, high);
            }
        }
        Read::Committed => {
            let mut list = TopicPartitionList::new();
            for p in partitions {
                list.add_partition(topic, p);
            }
            for e in consumer.committed_offsets(list, KAFKA_TIMEOUT)?.elements() {
                if let Offset::Offset(at) = e.offset() {
                    offsets.insert(e.partition(), at);
                }
            }
        }
    }
    Ok(offsets)
}

//! External state on Kafka: the events topic and its DLQ created and kept as the spec says, and
//! what the status reports (consumer lag, DLQ depth), all through the admin API.
//!
//! Owns the topic reconcile: create what is missing; add partitions when the spec asks for more;
//! report (never shrink) a topic that has more than the spec asks; set `retention.ms` and the
//! allow-listed settings of `spec.kafka.topic.config` and revert drift in them (Kafka's
//! AlterConfigs replaces a topic's dynamic settings as a whole, so settings added outside the spec
//! are removed too). Lag is read without joining the group: an OffsetFetch for the group's
//! committed offsets against the partitions' end offsets.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use messagepipeline_crd::{KafkaSpec, MessagePipelineSpec};
use pipeline_contract::access::{Refused, Service, kafka_cause};
use pipeline_contract::kafka_client::Refusals;
use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, NewPartitions, NewTopic, ResourceSpecifier,
    TopicReplication,
};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

const TIMEOUT: Duration = Duration::from_secs(10);

/// Connection settings with credentials already read from their Secrets.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    pub sasl: Option<(String, String)>,
    pub ca_pem: Option<String>,
}

/// librdkafka's `security.protocol` for what the spec asks: TLS, SASL, both or neither.
pub fn security_protocol(spec: &KafkaSpec) -> &'static str {
    match (&spec.tls, &spec.sasl) {
        (None, None) => "plaintext",
        (Some(_), None) => "ssl",
        (None, Some(_)) => "sasl_plaintext",
        (Some(_), Some(_)) => "sasl_ssl",
    }
}

pub fn client_config(spec: &KafkaSpec, creds: &Credentials) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &spec.bootstrap_servers)
        .set("socket.timeout.ms", "10000");
    c.set("security.protocol", security_protocol(spec));
    if let Some(pem) = &creds.ca_pem {
        c.set("ssl.ca.pem", pem);
    }
    if let (Some(sasl), Some((user, password))) = (&spec.sasl, &creds.sasl) {
        c.set("sasl.mechanism", sasl.mechanism.as_str())
            .set("sasl.username", user)
            .set("sasl.password", password);
    }
    c
}

/// One topic as the spec wants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WantedTopic {
    pub name: String,
    pub partitions: i32,
    pub replication: i32,
    pub config: BTreeMap<String, String>,
}

/// The events topic and the DLQ.
pub fn wanted(spec: &MessagePipelineSpec) -> [WantedTopic; 2] {
    let t = &spec.kafka.topic;
    let mut config = t.config.clone();
    config.insert("retention.ms".into(), t.retention_ms.to_string());
    config.insert("cleanup.policy".into(), "delete".into());
    let dlq = &spec.kafka.dlq;
    [
        WantedTopic {
            name: t.name.clone(),
            partitions: t.partitions,
            replication: t.replication_factor,
            config,
        },
        WantedTopic {
            name: spec.kafka.dlq_name(),
            partitions: dlq.partitions,
            replication: t.replication_factor,
            config: BTreeMap::from([
                ("retention.ms".to_owned(), dlq.retention_ms.to_string()),
                ("cleanup.policy".to_owned(), "delete".to_owned()),
            ]),
        },
    ]
}

/// What a topic reconcile did, for Events and the status.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopicReport {
    pub created: Vec<String>,
    pub partitions_added: Vec<String>,
    pub reverted: Vec<String>,
    /// Things that need a human (the operator will not fix them).
    pub notes: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    #[error("Kafka client: {0}")]
    Client(#[from] rdkafka::error::KafkaError),
    #[error("{step} `{topic}`: {code}")]
    Topic {
        step: &'static str,
        topic: String,
        code: RDKafkaErrorCode,
    },
    /// Kafka refused the operator's credentials, CA or principal.
    #[error("{0}")]
    Refused(Refused),
}

impl KafkaError {
    /// The refusal this error is, by its own code.
    fn own_refusal(&self, endpoint: &str) -> Option<Refused> {
        let cause = match self {
            Self::Client(e) => e
                .rdkafka_error_code()
                .and_then(|code| kafka_cause(code, &e.to_string())),
            Self::Topic { code, .. } => kafka_cause(*code, ""),
            Self::Refused(r) => return Some(r.clone()),
        }?;
        Some(Refused::new(
            Service::Kafka,
            cause,
            endpoint,
            self.to_string(),
        ))
    }

    /// The refusal, when this is one.
    pub fn refusal(&self) -> Option<&Refused> {
        match self {
            Self::Refused(r) => Some(r),
            _ => None,
        }
    }
}

/// A client context that keeps what refused the connections to `config`'s servers.
fn refusals(config: &ClientConfig) -> Refusals {
    Refusals::new(config.get("bootstrap.servers").unwrap_or_default())
}

fn admin(config: &ClientConfig) -> Result<AdminClient<Refusals>, KafkaError> {
    let mut config = config.clone();
    // Asking for a topic's metadata must never create it (librdkafka's producer default, on a
    // broker with `auto.create.topics.enable`, would, with the broker's default settings).
    config.set("allow.auto.create.topics", "false");
    Ok(config.create_with_context(refusals(&config))?)
}

/// Partition counts of existing topics among `names`: the metadata of these topics only (a
/// cluster's whole metadata grows with every topic of every pipeline and more).
fn partition_counts(
    admin: &AdminClient<Refusals>,
    names: &[&str],
) -> Result<HashMap<String, i32>, KafkaError> {
    let mut counts = HashMap::new();
    for name in names {
        let metadata = admin.inner().fetch_metadata(Some(name), TIMEOUT)?;
        counts.extend(
            metadata
                .topics()
                .iter()
                .filter(|t| t.name() == *name && t.error().is_none())
                .map(|t| (t.name().to_owned(), t.partitions().len() as i32)),
        );
    }
    Ok(counts)
}

/// Creates, grows and re-configures the pipeline's topics.
pub async fn ensure_topics(
    config: &ClientConfig,
    topics: &[WantedTopic],
) -> Result<TopicReport, KafkaError> {
    let result = match admin(config) {
        Ok(admin) => reconcile_topics(&admin, topics).await,
        Err(e) => Err(e),
    };
    let Err(error) = result else { return result };
    let endpoint = config.get("bootstrap.servers").unwrap_or_default();
    if let Some(refused) = error.own_refusal(endpoint) {
        return Err(KafkaError::Refused(refused));
    }
    let config = config.clone();
    match tokio::task::spawn_blocking(move || refusal_of(&config)).await {
        Ok(Some(refused)) => Err(KafkaError::Refused(refused)),
        _ => Err(error),
    }
}

/// What refuses the connections to `config`'s servers, if anything, within a few seconds. A
/// refused login or certificate fails an admin request as a mere transport failure; librdkafka
/// says why only in the error events of a client that is polled, which the admin client's
/// main queue is not.
fn refusal_of(config: &ClientConfig) -> Option<Refused> {
    let refusals = refusals(config);
    let probe: BaseConsumer<Refusals> = config.create_with_context(refusals.clone()).ok()?;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::time::Instant::now() < deadline {
        // Polling makes it connect and serves the error events.
        let _ = probe.poll(Duration::from_millis(200));
        if let Some(refused) = refusals.current() {
            return Some(refused);
        }
    }
    None
}

async fn reconcile_topics(
    admin: &AdminClient<Refusals>,
    topics: &[WantedTopic],
) -> Result<TopicReport, KafkaError> {
    let options = AdminOptions::new().request_timeout(Some(TIMEOUT));
    let names: Vec<&str> = topics.iter().map(|t| t.name.as_str()).collect();
    let existing = partition_counts(admin, &names)?;
    let mut report = TopicReport::default();
    for t in topics {
        match existing.get(&t.name) {
            None => {
                let mut new = NewTopic::new(&t.name, t.partitions, TopicReplication::Fixed(t.replication));
                for (k, v) in &t.config {
                    new = new.set(k, v);
                }
                for result in admin.create_topics([&new], &options).await? {
                    match result {
                        Ok(_) => report.created.push(t.name.clone()),
                        // Created concurrently (another reconcile): the next pass checks it.
                        Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
                        Err((_, code)) => {
                            return Err(KafkaError::Topic { step: "creating topic", topic: t.name.clone(), code });
                        }
                    }
                }
                continue;
            }
            Some(&have) if have < t.partitions => {
                let grow = NewPartitions::new(&t.name, t.partitions as usize);
                for result in admin.create_partitions([&grow], &options).await? {
                    result.map_err(|(_, code)| KafkaError::Topic { step: "adding partitions to", topic: t.name.clone(), code })?;
                }
                report.partitions_added.push(format!("{}: {have} → {}", t.name, t.partitions));
            }
            Some(&have) if have > t.partitions => report.notes.push(format!(
                "topic `{}` has {have} partitions, the spec asks for {} (changed outside the operator; Kafka cannot remove partitions, so it is left as it is)",
                t.name, t.partitions
            )),
            Some(_) => {}
        }
        // Settings: compare the topic's dynamic settings with the wanted ones.
        let described = admin
            .describe_configs([&ResourceSpecifier::Topic(&t.name)], &options)
            .await?;
        let mut dynamic: BTreeMap<String, String> = BTreeMap::new();
        for result in described {
            let resource = result.map_err(|code| KafkaError::Topic {
                step: "describing",
                topic: t.name.clone(),
                code,
            })?;
            for entry in resource.entries {
                if !entry.is_default
                    && matches!(entry.source, rdkafka::admin::ConfigSource::DynamicTopic)
                    && let Some(value) = entry.value
                {
                    dynamic.insert(entry.name, value);
                }
            }
        }
        if dynamic != t.config {
            let mut alter = AlterConfig::new(ResourceSpecifier::Topic(&t.name));
            for (k, v) in &t.config {
                alter = alter.set(k, v);
            }
            for result in admin.alter_configs([&alter], &options).await? {
                result.map_err(|(_, code)| KafkaError::Topic {
                    step: "configuring",
                    topic: t.name.clone(),
                    code,
                })?;
            }
            report.reverted.push(t.name.clone());
        }
    }
    Ok(report)
}

/// The cluster's id as its brokers report it, whatever address reached them; `None` when no
/// broker answered in time.
pub async fn cluster_id(config: &ClientConfig) -> Option<String> {
    let config = config.clone();
    tokio::task::spawn_blocking(move || admin(&config).ok()?.inner().fetch_cluster_id(TIMEOUT))
        .await
        .ok()
        .flatten()
}

/// Deletes the pipeline's topics (`deletionPolicy: Delete`); missing ones are fine.
pub async fn delete_topics(config: &ClientConfig, names: &[String]) -> Result<(), KafkaError> {
    let admin = admin(config)?;
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    for result in admin
        .delete_topics(&refs, &AdminOptions::new().request_timeout(Some(TIMEOUT)))
        .await?
    {
        match result {
            Ok(_) | Err((_, rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
            Err((topic, code)) => {
                return Err(KafkaError::Topic {
                    step: "deleting",
                    topic,
                    code,
                });
            }
        }
    }
    Ok(())
}

/// (consumer lag of `group` on `topic`, records in `dlq`), each `None` when not readable.
pub fn lag_and_depth(
    config: &ClientConfig,
    group: &str,
    topic: &str,
    dlq: &str,
) -> Result<(Option<i64>, Option<i64>), KafkaError> {
    let mut c = config.clone();
    // Only OffsetFetch and ListOffsets: this consumer never subscribes or joins the group.
    c.set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("allow.auto.create.topics", "false");
    let consumer: BaseConsumer = c.create()?;
    let result = (|| {
        let partitions = |name: &str| -> Result<Vec<i32>, rdkafka::error::KafkaError> {
            let metadata = consumer.fetch_metadata(Some(name), TIMEOUT)?;
            Ok(metadata
                .topics()
                .iter()
                .find(|t| t.name() == name && t.error().is_none())
                .map(|t| t.partitions().iter().map(|p| p.id()).collect())
                .unwrap_or_default())
        };
        let (events, dead) = (partitions(topic)?, partitions(dlq)?);
        let lag = if events.is_empty() {
            None
        } else {
            let mut tpl = TopicPartitionList::new();
            for &p in &events {
                tpl.add_partition(topic, p);
            }
            let committed = consumer.committed_offsets(tpl, TIMEOUT)?;
            let mut total = 0i64;
            for &p in &events {
                let (low, high) = consumer.fetch_watermarks(topic, p, TIMEOUT)?;
                let at = match committed.find_partition(topic, p).map(|e| e.offset()) {
                    Some(Offset::Offset(o)) => o,
                    _ => low,
                };
                total += (high - at).max(0);
            }
            drop(committed);
            Some(total)
        };
        let depth = if dead.is_empty() {
            None
        } else {
            let mut total = 0i64;
            for &p in &dead {
                let (low, high) = consumer.fetch_watermarks(dlq, p, TIMEOUT)?;
                total += high - low;
            }
            Some(total)
        };
        Ok::<_, rdkafka::error::KafkaError>((lag, depth))
    })();
    drop(consumer);
    Ok(result?)
}

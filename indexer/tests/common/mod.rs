//! What the indexer's tests against the rig share: a unique topic, DLQ and index layout, an
//! in-process indexer, event histories, and reading the index back.
#![allow(dead_code)] // each test binary uses its own part

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use e2e::state::{self, Versions};
use e2e::{rig::rig, unique, wait};
use indexer::config::{Cli, Command, RunArgs};
use indexer::metrics::Metrics;
use pipeline_contract::document::StoredMessage;
use pipeline_contract::install::{SearchEndpoint, install};
use pipeline_contract::kafka::{EventHeaders, MessageId, record_key};
use pipeline_contract::kafka_client;
use pipeline_contract::search::{IndexLayout, IndexSettings, SearchDocument};
use pipeline_contract::{DeletedPayload, MessageEvent, MessagePayload, Timestamp};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::OwnedHeaders;

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// A topic, its DLQ and an installed index layout, all unique to one test.
pub struct Fixture {
    pub topic: String,
    pub dlq: String,
    pub layout: IndexLayout,
    http: reqwest::Client,
}

impl Fixture {
    pub async fn new(gc_deletes: Option<&str>) -> Self {
        let (topic, dlq) = events_and_dlq("idx-events", 3).await;
        let layout = IndexLayout::new(unique("idx-messages")).unwrap();
        let http = reqwest::Client::new();
        let settings = IndexSettings {
            replicas: 0,
            gc_deletes: gc_deletes.map(str::to_owned),
            ..IndexSettings::default()
        };
        install(
            &http,
            &SearchEndpoint::new(rig().search_url()),
            &layout,
            &settings,
        )
        .await
        .expect("install");
        Self {
            topic,
            dlq,
            layout,
            http,
        }
    }

    /// Arguments of an in-process indexer for this fixture, parsed like the binary's so that
    /// every flag not named here keeps its default; small batches and short waits for tests.
    pub fn args(&self, group: &str) -> RunArgs {
        let cli = Cli::try_parse_from([
            "indexer",
            "run",
            "--bootstrap-servers",
            rig().kafka(),
            "--topic",
            &self.topic,
            "--dlq-topic",
            &self.dlq,
            "--group",
            group,
            "--search-url",
            rig().search_url(),
            "--alias",
            self.layout.alias(),
            "--batch-max-count",
            "50",
            "--batch-linger-ms",
            "50",
            "--retry-max-attempts",
            "3",
            "--retry-backoff-ms",
            "50",
            "--breaker-failure-threshold",
            "3",
            "--breaker-cooldown-ms",
            "1000",
            "--request-timeout-ms",
            "10000",
            "--http-addr",
            "127.0.0.1:0",
        ])
        .expect("run arguments");
        let Command::Run(args) = cli.command else {
            unreachable!("parsed `run`")
        };
        args
    }

    /// Starts an indexer in this process; stop it with the returned token.
    pub fn start(
        &self,
        group: &str,
    ) -> (Arc<Metrics>, CancellationToken, tokio::task::JoinHandle<()>) {
        self.start_with(self.args(group))
    }

    /// Starts an indexer in this process with `args`.
    pub fn start_with(
        &self,
        args: RunArgs,
    ) -> (Arc<Metrics>, CancellationToken, tokio::task::JoinHandle<()>) {
        let metrics = Arc::new(Metrics::new());
        let token = CancellationToken::new();
        let task = tokio::spawn({
            let (metrics, token) = (metrics.clone(), token.clone());
            async move {
                indexer::run::run(args, metrics, token)
                    .await
                    .expect("indexer run")
            }
        });
        (metrics, token, task)
    }

    pub async fn produce(&self, records: &[(Option<String>, Vec<u8>, OwnedHeaders)]) {
        let producer = e2e::kafka::producer();
        for (key, value, headers) in records {
            let record = kafka_client::record(
                &self.topic,
                key.as_deref().map(str::as_bytes),
                Some(value),
                headers.clone(),
            );
            producer
                .send(record, Duration::from_secs(10))
                .await
                .expect("produce");
        }
    }

    /// Every document of the index by id: (version, deleted).
    pub async fn documents(&self) -> Versions {
        state::indexed(self.layout.alias())
            .await
            .expect("the search engine answers")
    }
}

/// A passed test's topics and index go with it (a failed one's stay, to show why).
impl Drop for Fixture {
    fn drop(&mut self) {
        e2e::cleanup::remove_after_test(
            rig().search_url().to_owned(),
            self.layout.clone(),
            vec![self.topic.clone(), self.dlq.clone()],
        );
    }
}

pub fn event_record(event: &MessageEvent) -> (Option<String>, Vec<u8>, OwnedHeaders) {
    let headers = EventHeaders {
        correlation_id: "test".into(),
        message_id: MessageId::of(event).unwrap(),
        timestamp: event.changed_at().unwrap(),
        traceparent: None,
    };
    let owned = kafka_client::headers(
        headers
            .pairs()
            .into_iter()
            .map(|(name, value)| (name, Some(value))),
    );
    (record_key(event), event.encode(), owned)
}

/// The history of one message: versions 1..=n, then maybe a delete.
pub fn history(conversation: Uuid, updates: u64, delete: bool) -> Vec<MessageEvent> {
    let id = Uuid::new_v4();
    let created = Timestamp::now();
    let state = |version: u64| MessagePayload {
        id,
        conversation_id: Some(conversation),
        sender_id: Some(Uuid::new_v4()),
        content: format!("content v{version}"),
        tenant_id: "tenant-a".into(),
        timestamp: Some(created),
        updated_at: (version > 1).then(Timestamp::now),
        metadata: serde_json::Map::new(),
        version: Some(version),
    };
    let mut events = vec![MessageEvent::Created(state(1))];
    events.extend((2..=updates + 1).map(|v| MessageEvent::Updated(state(v))));
    if delete {
        events.push(MessageEvent::Deleted(DeletedPayload {
            id,
            conversation_id: Some(conversation),
            tenant_id: "tenant-a".into(),
            version: Some(updates + 2),
            deleted_at: Some(Timestamp::now()),
        }));
    }
    events
}

/// Creates a unique events topic with `partitions` partitions and its one-partition DLQ
/// (`<topic>.dlq`); returns both names.
pub async fn events_and_dlq(prefix: &str, partitions: i32) -> (String, String) {
    let topic = unique(prefix);
    let dlq = format!("{topic}.dlq");
    e2e::kafka::create_topics(&[(&topic, partitions), (&dlq, 1)]).await;
    (topic, dlq)
}

/// Waits until the index holds exactly `expected`.
pub async fn converge(fixture: &Fixture, expected: &Versions, what: &str) {
    wait::until(what, Duration::from_secs(90), || async {
        let docs = fixture.documents().await;
        (docs == *expected).then_some(())
    })
    .await;
}

/// How many members the consumer group has.
pub fn members(group: &str) -> usize {
    let client: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", rig().kafka())
        .create()
        .unwrap();
    let groups = client
        .fetch_group_list(Some(group), Duration::from_secs(10))
        .expect("group list");
    groups.groups().first().map_or(0, |g| g.members().len())
}

/// A message document as the api-server writes it: live at `version`, or a tombstone.
pub fn stored_message(version: i64, deleted: bool) -> StoredMessage {
    let now = mongodb::bson::DateTime::now();
    StoredMessage {
        id: Uuid::new_v4().to_string(),
        tenant_id: "tenant-a".into(),
        conversation_id: Uuid::new_v4().to_string(),
        sender_id: (!deleted).then(|| Uuid::new_v4().to_string()),
        content: (!deleted).then(|| format!("content v{version}")),
        metadata_json: (!deleted).then(|| r#"{"k":"v"}"#.to_owned()),
        timestamp: now,
        updated_at: now,
        version,
        deleted,
        deleted_at: deleted.then_some(now),
        fingerprint: None,
        correlation_id: "indexer-test".into(),
    }
}

/// The state `m` leaves in the index.
pub fn search_document(m: &StoredMessage) -> SearchDocument {
    SearchDocument::try_from(m.to_event().unwrap()).unwrap()
}

/// A fixture with MongoDB beside it: messages stored in a database of their own and their events
/// on the topic, in that order, as the api-server and its relay do.
pub struct Stack {
    pub fixture: Fixture,
    pub database: String,
    pub group: String,
    messages: mongodb::Collection<StoredMessage>,
    producer: rdkafka::producer::FutureProducer,
}

impl Stack {
    /// `messages` stored and published, with an index whose deletes forget their version at
    /// once (`gc_deletes` 0s, so a test can put an older version back).
    pub async fn new(messages: &[StoredMessage]) -> Self {
        let fixture = Fixture::new(Some("0s")).await;
        let database = unique("idx-mongo").replace('-', "_");
        let client = mongodb::Client::with_uri_str(rig().mongodb_uri())
            .await
            .unwrap();
        let stack = Self {
            messages: client.database(&database).collection("messages"),
            fixture,
            database,
            group: unique("idx-group"),
            producer: e2e::kafka::producer(),
        };
        if !messages.is_empty() {
            stack.messages.insert_many(messages).await.unwrap();
            let records: Vec<_> = messages
                .iter()
                .map(|m| event_record(&m.to_event().unwrap()))
                .collect();
            stack.fixture.produce(&records).await;
        }
        stack
    }

    /// Stores `m` (replacing the document of its id), then publishes its event.
    pub async fn write(&self, m: &StoredMessage) {
        self.messages
            .replace_one(mongodb::bson::doc! {"_id": &m.id}, m)
            .upsert(true)
            .await
            .unwrap();
        let (key, value, headers) = event_record(&m.to_event().unwrap());
        let record = kafka_client::record(
            &self.fixture.topic,
            key.as_deref().map(str::as_bytes),
            Some(&value),
            headers,
        );
        self.producer
            .send(record, Duration::from_secs(10))
            .await
            .expect("produce");
    }

    /// What MongoDB holds: the truth the index is compared with.
    pub async fn stored(&self) -> Versions {
        state::stored(&self.database).await
    }

    /// The `indexer <command>` of this stack, parsed like the binary's: MongoDB, Kafka, topic,
    /// search engine and alias named, then `extra`.
    pub fn command(&self, command: &str, extra: &[&str]) -> Command {
        let mut argv = vec![
            "indexer",
            command,
            "--mongodb-uri",
            rig().mongodb_uri(),
            "--mongodb-database",
            &self.database,
            "--bootstrap-servers",
            rig().kafka(),
            "--topic",
            &self.fixture.topic,
            "--search-url",
            rig().search_url(),
            "--alias",
            self.fixture.layout.alias(),
        ];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv)
            .unwrap_or_else(|e| panic!("indexer {command} arguments: {e}"))
            .command
    }
}

/// Waits until the index holds exactly what MongoDB holds.
pub async fn converge_to(stack: &Stack, what: &str) {
    wait::until(what, Duration::from_secs(90), || async {
        let (stored, indexed) = (stack.stored().await, stack.fixture.documents().await);
        (stored == indexed).then_some(())
    })
    .await;
}

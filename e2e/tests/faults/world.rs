//! What every class runs against: the operator installed cluster-wide, the pipeline `chat` the
//! classes hurt (two api-servers and two indexers), and a bystander pipeline in a namespace of
//! its own whose external state no class may touch; and the checks each class ends with.

use std::time::{Duration, Instant};

use e2e::cluster::{Install, Pipeline, ready_with};
use e2e::rig::rig;
use e2e::state::{self, Versions};
use e2e::{kafka, wait};
use messagepipeline_crd::{ExternalStatus, MessagePipeline};
use pipeline_contract::MessageEvent;
use serde_json::json;

/// From applying a pipeline to Ready=True: worker pods of debug builds on a shared 2-core node.
pub const READY_WITHIN: Duration = Duration::from_secs(240);
/// For the index and the topic to catch up with MongoDB once writes stop.
pub const CONVERGE_WITHIN: Duration = Duration::from_secs(120);
/// How long the bystander may take to be Ready again after a class.
const BYSTANDER_READY_WITHIN: Duration = Duration::from_secs(60);
/// Records and documents the bystander holds.
const BYSTANDER_DOCUMENTS: usize = 20;

pub struct World {
    pub install: Install,
    pub chat: Pipeline,
    pub bystander: Pipeline,
    /// The bystander's external state as it was set up.
    pub bystander_was: Footprint,
    /// The longer mode (`make e2e-full`).
    pub full: bool,
}

impl World {
    pub async fn new() -> Self {
        let install = Install::cluster_wide("faults").await;
        let search = rig().pod_endpoints().search_url;
        // A short progress deadline, so that a rollout that cannot finish says so soon.
        let chat = install
            .ready_pipeline(
                "chat",
                search,
                json!({"progressDeadlineSeconds": 30}),
                (2, 2),
                READY_WITHIN,
            )
            .await;
        // The workers start once the topics and the index exist: none crashed on their way.
        for pod in chat.worker_pods(&install).await {
            let restarts: i32 = pod
                .status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref())
                .map_or(0, |c| c.iter().map(|c| c.restart_count).sum());
            assert_eq!(
                restarts,
                0,
                "{} restarted at install",
                pod.metadata.name.unwrap_or_default()
            );
        }
        let namespace = install.namespace("faults-bystander").await;
        let bystander = install
            .apply_pipeline_in(
                &namespace,
                "bystander",
                search,
                json!({"api": {"replicas": 0}, "indexer": {"replicas": 0}}),
            )
            .await;
        bystander
            .until(&install, "the bystander Ready", READY_WITHIN, |mp| {
                ready_with(mp, 0, 0)
            })
            .await;
        seed(&bystander).await;
        let bystander_was = Footprint::of(&install, &bystander).await;
        assert_eq!(bystander_was.records, BYSTANDER_DOCUMENTS as i64);
        assert_eq!(bystander_was.documents, Some(BYSTANDER_DOCUMENTS));
        Self {
            install,
            chat,
            bystander,
            bystander_was,
            full: cfg!(feature = "full"),
        }
    }

    /// The api-server's Service as this machine reaches it.
    pub async fn base(&self) -> String {
        self.chat.api_base(&self.install).await
    }

    /// What every class ends with: each write in `acked` in MongoDB (at its version or later)
    /// and the index equal to MongoDB; each stored message's highest version on the topic equal
    /// to MongoDB's; the bystander as it was. Returns the documents compared.
    pub async fn check(&self, class: &str, acked: &Versions) -> usize {
        let documents = self.chat.verify(acked, CONVERGE_WITHIN).await;
        self.on_kafka(class).await;
        let now = Footprint::of(&self.install, &self.bystander).await;
        assert_eq!(
            now, self.bystander_was,
            "{class}: the bystander's external state changed"
        );
        // Ready again within the operator's requeue (30 s) and then some: a class may have
        // left it briefly not Ready for a true reason (an operator pod killed, whose successor's
        // first request failed); the watcher holds every sample of it to the truth meanwhile.
        let mps = self.bystander.mps(&self.install);
        let deadline = Instant::now() + BYSTANDER_READY_WITHIN;
        loop {
            let mp = mps.get(&self.bystander.name).await.unwrap();
            if ready_with(&mp, 0, 0) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{class}: the bystander is not Ready after {BYSTANDER_READY_WITHIN:?}: {:?}",
                mp.status
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        documents
    }

    /// Every stored message on chat's topic at its MongoDB version (the relays may still be
    /// publishing what was written last).
    async fn on_kafka(&self, class: &str) {
        let deadline = Instant::now() + CONVERGE_WITHIN;
        loop {
            let stored = self.chat.stored().await;
            let topic = self.chat.topic.clone();
            let published = tokio::task::spawn_blocking(move || {
                let records = kafka::read_topic(&topic);
                let events: Vec<MessageEvent> = records
                    .iter()
                    .filter_map(|r| MessageEvent::decode(&r.payload).ok())
                    .collect();
                state::newest(&events)
            })
            .await
            .unwrap();
            let missing: Vec<_> = stored
                .iter()
                .filter(|(id, v)| published.get(id) != Some(v))
                .take(5)
                .collect();
            if missing.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{class}: stored messages not on the topic at their version after {CONVERGE_WITHIN:?}, e.g. {missing:?}"
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    pub async fn remove(self) {
        self.install.remove().await;
    }
}

/// Records on the bystander's topic and documents in its index, written directly: it has no
/// workers, so nothing but a fault could change them.
async fn seed(bystander: &Pipeline) {
    use rdkafka::producer::FutureRecord;
    let producer = kafka::producer();
    for n in 0..BYSTANDER_DOCUMENTS {
        let key = format!("k{n}");
        producer
            .send(
                FutureRecord::to(&bystander.topic)
                    .key(&key)
                    .payload("bystander"),
                Duration::from_secs(10),
            )
            .await
            .expect("a bystander record");
    }
    let mut bulk = String::new();
    for n in 0..BYSTANDER_DOCUMENTS {
        let id = uuid::Uuid::from_u128(n as u128 + 1);
        bulk += &format!(
            "{}\n{}\n",
            json!({"index": {"_index": bystander.alias, "_id": id, "version": 1, "version_type": "external"}}),
            json!({"id": id, "tenantId": "bystander", "conversationId": id, "senderId": id,
                   "content": "bystander", "timestamp": "2026-12-07T00:00:00.000Z",
                   "version": 1, "deleted": false, "metadata": {}})
        );
    }
    let answer = reqwest::Client::new()
        .post(format!("{}/_bulk?refresh=true", rig().search_url()))
        .header("content-type", "application/x-ndjson")
        .body(bulk)
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(body["errors"], json!(false), "{body}");
}

/// A pipeline's external state as this machine reads it directly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Footprint {
    /// Records on the events topic (end offsets summed).
    pub records: i64,
    pub dlq: bool,
    pub template: bool,
    /// The indices the alias points at.
    pub alias: Vec<String>,
    pub documents: Option<usize>,
    /// What its status records of its clusters and topics.
    pub external: ExternalStatus,
}

impl Footprint {
    pub async fn of(install: &Install, p: &Pipeline) -> Self {
        let mp: MessagePipeline = p.mps(install).get(&p.name).await.unwrap();
        let (topic, dlq) = (p.topic.clone(), mp.spec.kafka.dlq_name());
        let (records, dlq) = tokio::task::spawn_blocking(move || {
            let records = if kafka::topic_exists(&topic) {
                kafka::end_offsets_total(&topic)
            } else {
                -1
            };
            (records, kafka::topic_exists(&dlq))
        })
        .await
        .unwrap();
        let http = reqwest::Client::new();
        let base = rig().search_url();
        let template = http
            .get(format!("{base}/_index_template/{}-template", p.alias))
            .send()
            .await
            .unwrap()
            .status()
            .is_success();
        let aliases: serde_json::Value = http
            .get(format!("{base}/_alias/{}", p.alias))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap_or_default();
        let mut alias: Vec<String> = aliases
            .as_object()
            .filter(|o| !o.contains_key("error"))
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default();
        alias.sort();
        Self {
            records,
            dlq,
            template,
            alias,
            documents: state::indexed(&p.alias).await.map(|d| d.len()),
            external: mp.status.unwrap_or_default().external,
        }
    }
}

/// Waits until `check` holds for `p` (at most `within`).
pub async fn until(
    world: &World,
    p: &Pipeline,
    what: &str,
    within: Duration,
    check: impl Fn(&MessagePipeline) -> bool,
) -> MessagePipeline {
    p.until(&world.install, what, within, check).await
}

/// Waits until `done` answers `Some`.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, done: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    wait::until(what, within, done).await
}

//! Property 1 (no dual-write loss) with several api-server replicas on one database, as a
//! MessagePipeline runs them: three processes, writers on all three (each request to one of them
//! at random, so replicas change each other's messages), Kafka stopped for longer than the
//! relay's overlap, and in turn one replica killed -9 and restarted under a new name, one killed
//! -9 for good (a scale-down), and all three replaced one by one (a rolling update). Once Kafka
//! is back, the highest published version of every message equals its version in MongoDB, every
//! acknowledged change is in MongoDB, and the dead replicas' registrations were adopted.
//!
//! These tests stop the shared Kafka: they live alone in this test binary and run one at a time.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use common::{Acked, KafkaDown, Server, Setup, converged, metric, writer};
use e2e::wait;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Short overlap and expiry keep the test short; the outage lasts several overlaps.
const OVERLAP: Duration = Duration::from_millis(1_000);
const EXPIRY: Duration = Duration::from_millis(4_000);

/// Three replicas on one database and topic, and writers spread over them.
struct Cluster {
    setup: Setup,
    servers: Vec<Option<Server>>,
    bases: Arc<RwLock<Vec<String>>>,
    acked: Acked,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    writers: Vec<tokio::task::JoinHandle<()>>,
    /// Pod names handed out so far: every new process gets a new one, as pods do.
    names: usize,
}

impl Cluster {
    async fn start(prefix: &str) -> Self {
        let mut cluster = Self {
            setup: Setup::new(prefix).await,
            servers: Vec::new(),
            bases: Arc::default(),
            acked: Arc::default(),
            stop: Arc::default(),
            done: Arc::default(),
            writers: Vec::new(),
            names: 0,
        };
        for _ in 0..3 {
            let server = cluster.spawn().await;
            cluster.servers.push(Some(server));
        }
        cluster.publish_bases();
        for _ in 0..3 {
            cluster.writers.push(tokio::spawn(writer(
                cluster.bases.clone(),
                cluster.acked.clone(),
                cluster.stop.clone(),
                cluster.done.clone(),
                Duration::from_millis(15),
            )));
        }
        cluster
    }

    async fn spawn(&mut self) -> Server {
        let name = format!("api-{}", self.names);
        self.names += 1;
        Server::start_with(
            &self.setup,
            &[
                ("POD_NAME", name.as_str()),
                ("RELAY_OVERLAP_MS", &OVERLAP.as_millis().to_string()),
                ("RELAY_REPLICA_EXPIRY_MS", &EXPIRY.as_millis().to_string()),
                ("RELAY_MESSAGE_TIMEOUT_MS", "3000"),
            ],
        )
        .await
    }

    /// Kills replica `i` with SIGKILL for good (until a later `spawn` takes its place) and
    /// waits until the survivors see its heartbeat stop, while Kafka is still away.
    async fn kill_and_see_it_orphaned(&mut self, i: usize) {
        self.servers[i].take().unwrap().kill9();
        self.publish_bases();
        self.metric_sum("api_relay_orphaned_replicas", |n| n >= 1.0)
            .await;
    }

    /// Points the writers at the servers running now.
    fn publish_bases(&self) {
        *self.bases.write().unwrap() = self.live().map(|s| s.base.clone()).collect();
    }

    fn live(&self) -> impl Iterator<Item = &Server> {
        self.servers.iter().flatten()
    }

    /// Waits until `n` more writes were acknowledged.
    async fn writes(&self, n: u64, what: &str) {
        let target = self.done.load(Ordering::Relaxed) + n;
        wait::until(what, Duration::from_secs(60), || async {
            (self.done.load(Ordering::Relaxed) >= target).then_some(())
        })
        .await;
    }

    /// Waits until the sum over live replicas of a metric satisfies `ok`.
    async fn metric_sum(&self, sample: &str, ok: impl Fn(f64) -> bool) {
        wait::until(sample, Duration::from_secs(60), || async {
            let mut sum = 0.0;
            for server in self.live() {
                sum += metric(server, sample).await.unwrap_or(0.0);
            }
            ok(sum).then_some(())
        })
        .await;
    }

    /// Stops the writers and checks property 1 once everything is published.
    async fn finish(self, adopted_at_least: f64) {
        self.stop.store(true, Ordering::Relaxed);
        for w in self.writers {
            w.await.unwrap();
        }
        let published = converged(&self.setup, Duration::from_secs(120)).await;
        let stored = self.setup.stored().await;
        let acked = self.acked.lock().unwrap().clone();
        assert!(acked.len() > 100, "enough load: {} messages", acked.len());
        assert!(stored.values().any(|&(v, _)| v > 2), "some updates");
        assert!(stored.values().any(|&(_, d)| d), "some deletes");
        for (id, (version, deleted)) in &acked {
            let (stored_version, stored_deleted) = stored[id];
            assert!(
                stored_version >= *version,
                "{id}: acked v{version}, stored v{stored_version}"
            );
            assert!(!deleted || stored_deleted, "{id}: acked delete not stored");
            assert_eq!(published[id], stored[id], "{id}");
        }
        let live: Vec<&Server> = self.servers.iter().flatten().collect();
        wait::until(
            "dead replicas adopted, none left orphaned",
            Duration::from_secs(60),
            || async {
                let (mut adopted, mut orphans) = (0.0, 0.0);
                for server in &live {
                    adopted += metric(server, "api_relay_adopted_replicas_total")
                        .await
                        .unwrap_or(0.0);
                    orphans += metric(server, "api_relay_orphaned_replicas")
                        .await
                        .unwrap_or(0.0);
                }
                (adopted >= adopted_at_least && orphans == 0.0).then_some(())
            },
        )
        .await;
        eprintln!(
            "{} acknowledged writes over {} messages; topic and MongoDB agree",
            self.done.load(Ordering::Relaxed),
            stored.len()
        );
    }
}

/// Kafka down, writes on all replicas for a few overlaps, then `during`; Kafka stays down a
/// few overlaps more, then returns while the writers go on.
async fn with_kafka_down(cluster: &mut Cluster, during: impl AsyncFnOnce(&mut Cluster)) {
    cluster.writes(30, "writes before the outage").await;
    let outage = KafkaDown::stop();
    let began = Instant::now();
    cluster.writes(60, "writes while Kafka is away").await;
    wait::until("past three overlaps", OVERLAP * 10, || async {
        (began.elapsed() > OVERLAP * 3).then_some(())
    })
    .await;
    during(cluster).await;
    cluster.writes(60, "more writes while Kafka is away").await;
    let down_for = began.elapsed();
    assert!(down_for > OVERLAP * 5, "Kafka away {down_for:?}");
    drop(outage);
    eprintln!("Kafka was away for {down_for:?}");
    cluster.writes(60, "writes after Kafka returned").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_and_restarted_under_a_new_name_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start("replicas-restart").await;
    with_kafka_down(&mut cluster, async |c| {
        c.kill_and_see_it_orphaned(0).await;
        c.writes(60, "writes on the survivors").await;
        let replacement = c.spawn().await;
        c.servers[0] = Some(replacement);
        c.publish_bases();
    })
    .await;
    cluster.finish(1.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_for_good_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start("replicas-scale-down").await;
    with_kafka_down(&mut cluster, async |c| {
        c.kill_and_see_it_orphaned(1).await;
    })
    .await;
    cluster.finish(1.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_replica_replaced_one_by_one_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start("replicas-rolling").await;
    with_kafka_down(&mut cluster, async |c| {
        for i in 0..3 {
            // As a Deployment does: the new pod first, then the old one stopped.
            let replacement = c.spawn().await;
            let mut old = c.servers[i].replace(replacement).unwrap();
            c.publish_bases();
            assert!(old.terminate(), "clean exit of the replaced replica");
            c.writes(30, "writes after a replacement").await;
        }
    })
    .await;
    // Each replaced replica stopped owing changes (Kafka was away) and was adopted.
    cluster.finish(3.0).await;
}

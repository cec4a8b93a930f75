//! The long cluster scenarios (`make e2e-full`, not in `make test`): the indexer scaled 1 → 3 → 1
//! under writes, and a chaos run of at least 60 s at 100 writes/s or more with a pod force-deleted
//! every few seconds. Like e2e/tests/cluster.rs, each ends with nothing acknowledged lost and the
//! index equal to MongoDB document by document, and prints its figures.
#![cfg(feature = "full")]

use std::time::{Duration, Instant};

use e2e::cluster::{Install, Traffic, force_delete, pod_ready, ready_with};
use e2e::rig::rig;
use k8s_openapi::api::core::v1::Pod;
use serde_json::json;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
const READY_WITHIN: Duration = Duration::from_secs(240);
const CONVERGE_WITHIN: Duration = Duration::from_secs(180);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_indexer_scaled_one_three_one_under_writes_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let install = Install::new("full-scale").await;
    let pipeline = install
        .ready_pipeline(
            "chat",
            rig().pod_endpoints().search_url,
            json!({"indexer": {"replicas": 1}}),
            (2, 1),
            READY_WITHIN,
        )
        .await;
    let base = pipeline.api_base(&install).await;
    let traffic = Traffic::start(&base, 4, Duration::from_millis(10));
    traffic.progresses(100, Duration::from_secs(60)).await;
    let mut figures = Vec::new();
    for replicas in [3, 1] {
        let t = Instant::now();
        install
            .change_spec("chat", |spec| spec["indexer"]["replicas"] = json!(replicas))
            .await;
        pipeline
            .until(
                &install,
                &format!("{replicas} live ready indexers"),
                READY_WITHIN,
                |mp| ready_with(mp, 2, replicas),
            )
            .await;
        figures.push(format!("to {replicas} in {:?}", t.elapsed()));
        traffic.progresses(100, Duration::from_secs(60)).await;
    }
    let (acked, writes, rate) = traffic.stop().await;
    let documents = pipeline.verify(&acked, CONVERGE_WITHIN).await;
    eprintln!(
        "full scale: indexer 1 → 3 → 1 ({}); {writes} writes at {rate:.0}/s, {documents} documents equal in MongoDB and the index",
        figures.join(", ")
    );
    install.remove().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_for_a_minute_at_a_hundred_writes_a_second_with_pods_killed_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let secs: u64 = std::env::var("CHAOS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let install = Install::new("full-chaos").await;
    let pipeline = install
        .ready_pipeline(
            "chat",
            rig().pod_endpoints().search_url,
            json!({}),
            (2, 2),
            READY_WITHIN,
        )
        .await;
    let base = pipeline.api_base(&install).await;
    let traffic = Traffic::start(&base, 16, Duration::from_millis(20));
    traffic.progresses(100, Duration::from_secs(60)).await;

    let started = Instant::now();
    let before = traffic.done();
    let mut killed = Vec::new();
    while started.elapsed() < Duration::from_secs(secs) {
        // Every 8 s one pod of the pipeline or the operator, at random, among those running.
        let mut pods = pipeline.worker_pods(&install).await;
        pods.extend(install.operator_pods().await);
        let running: Vec<&Pod> = pods.iter().filter(|p| pod_ready(p)).collect();
        if !running.is_empty() {
            let victim = running[fastrand::usize(0..running.len())]
                .metadata
                .name
                .clone()
                .unwrap();
            force_delete(&install, &victim).await;
            killed.push(victim);
        }
        tokio::time::sleep(Duration::from_secs(8)).await;
    }
    let chaos = started.elapsed();
    let during = traffic.done() - before;
    let t = Instant::now();
    pipeline
        .until(&install, "Ready=True after the chaos", READY_WITHIN, |mp| {
            ready_with(mp, 2, 2)
        })
        .await;
    let recovered = t.elapsed();
    traffic.progresses(100, Duration::from_secs(60)).await;
    let (acked, writes, rate) = traffic.stop().await;
    let documents = pipeline.verify(&acked, CONVERGE_WITHIN).await;
    assert!(killed.len() >= 5, "at least 5 kills: {killed:?}");
    let chaos_rate = during as f64 / chaos.as_secs_f64();
    assert!(
        chaos_rate >= 100.0,
        "at least 100 writes/s during the chaos: {chaos_rate:.0}/s"
    );
    eprintln!(
        "full chaos: {chaos:?} with {} pods force-deleted, {during} writes during it ({:.0}/s), Ready again {recovered:?} after; {writes} writes in all at {rate:.0}/s, {documents} documents equal in MongoDB and the index",
        killed.len(),
        chaos_rate
    );
    install.remove().await;
}

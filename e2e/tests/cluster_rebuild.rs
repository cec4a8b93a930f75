//! A rebuild driven from the MessagePipeline on the rig's node: raising
//! `spec.elasticsearch.indexGeneration` while clients write and search through the API, the
//! operator's Job (`indexer rebuild --operator-swaps`, a pod of the worker image) fills the next
//! generation from MongoDB and the topic, the operator swaps the alias, and afterwards every
//! acknowledged write is in MongoDB, the index equals MongoDB document by document, and no
//! search failed. Lowering the generation is then refused with a reason.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use e2e::cluster::{self, Install, Traffic};
use e2e::rig::rig;
use k8s_openapi::api::batch::v1::Job;
use messagepipeline_crd::MessagePipeline;
use serde_json::json;

const READY_WITHIN: Duration = Duration::from_secs(240);
/// The Job's pod starting on a shared 2-core node, the scan, the catch-ups and the swap.
const REBUILT_WITHIN: Duration = Duration::from_secs(240);
const CONVERGE_WITHIN: Duration = Duration::from_secs(120);

fn rebuilding(mp: &MessagePipeline) -> Option<(String, String)> {
    let c = mp
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Rebuilding")?;
    Some((c.status.clone(), c.reason.clone()))
}

/// Searches through the API until stopped; (searches, failures with their answers).
fn searcher(base: String, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<(u64, Vec<String>)> {
    tokio::spawn(async move {
        let http = reqwest::Client::new();
        let (mut searched, mut failures) = (0, Vec::new());
        while !stop.load(Ordering::Relaxed) {
            let answer = http
                .get(format!("{base}/v1/search?q=message"))
                .bearer_auth(cluster::KEY)
                .send()
                .await;
            searched += 1;
            match answer {
                Ok(r) if r.status().is_success() => {}
                Ok(r) => failures.push(format!(
                    "{}: {}",
                    r.status(),
                    r.text().await.unwrap_or_default()
                )),
                Err(e) => failures.push(e.to_string()),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (searched, failures)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn raising_the_index_generation_rebuilds_under_traffic_and_loses_nothing() {
    let install = Install::new("rebuild").await;
    let pipeline = install
        .ready_pipeline(
            "chat",
            rig().pod_endpoints().search_url,
            json!({"api": {"replicas": 1}, "indexer": {"replicas": 1}}),
            (1, 1),
            READY_WITHIN,
        )
        .await;
    let first = pipeline
        .until(&install, "the index status", READY_WITHIN, |mp| {
            rebuilding(mp).is_some_and(|(_, reason)| reason == "NoRebuild")
        })
        .await;
    let index = first.status.unwrap().index.unwrap();
    assert_eq!(index.generation, Some(1));
    assert_eq!(index.indices, [format!("{}-000001", pipeline.alias)]);

    let base = pipeline.api_base(&install).await;
    let traffic = Traffic::start(&base, 2, Duration::from_millis(20));
    traffic.progresses(200, Duration::from_secs(120)).await;
    let stop = Arc::new(AtomicBool::new(false));
    let searches = searcher(base.clone(), Arc::clone(&stop));

    install
        .change_spec("chat", |spec| {
            spec["elasticsearch"]["indexGeneration"] = json!(2);
        })
        .await;
    let done = pipeline
        .until(&install, "the rebuild complete", REBUILT_WITHIN, |mp| {
            rebuilding(mp)
                .is_some_and(|(status, reason)| status == "False" && reason == "RebuildComplete")
        })
        .await;
    // Writes and searches go on after the swap.
    traffic.progresses(100, Duration::from_secs(120)).await;
    let (acked, writes, rate) = traffic.stop().await;
    stop.store(true, Ordering::Relaxed);
    let (searched, failures) = searches.await.unwrap();

    let index = done.status.unwrap().index.unwrap();
    let second = format!("{}-000002", pipeline.alias);
    assert_eq!(
        (index.generation, index.indices.clone()),
        (Some(2), vec![second])
    );
    let rebuild = index.rebuild.unwrap();
    assert_eq!((rebuild.generation, rebuild.phase.as_str()), (2, "Done"));
    assert_eq!(
        rebuild.previous,
        [format!("{}-000001", pipeline.alias)],
        "kept by default"
    );
    assert!(rebuild.documents_done > 0, "{rebuild:?}");
    assert!(rebuild.start_time.is_some() && rebuild.completion_time.is_some());
    assert!(
        searched > 10 && failures.is_empty(),
        "{searched} searches through the API, failures: {failures:?}"
    );
    let documents = pipeline.verify(&acked, CONVERGE_WITHIN).await;
    eprintln!(
        "rebuild under traffic: {writes} writes at {rate:.0}/s, {searched} searches, \
         {documents} documents equal in MongoDB and generation 2"
    );

    let job = install
        .api::<Job>()
        .get(&format!("{}-rebuild-2", pipeline.name))
        .await
        .unwrap();
    assert_eq!(job.status.and_then(|s| s.succeeded), Some(1));
    install
        .assert_events(&["RebuildStarted", "IndexSwapped", "RebuildComplete"])
        .await;

    install
        .change_spec("chat", |spec| {
            spec["elasticsearch"]["indexGeneration"] = json!(1);
        })
        .await;
    let refused = pipeline
        .until(
            &install,
            "the lower generation refused",
            READY_WITHIN,
            |mp| rebuilding(mp).is_some_and(|(_, reason)| reason == "GenerationNotNewer"),
        )
        .await;
    assert_eq!(
        refused.status.unwrap().index.unwrap().generation,
        Some(2),
        "the alias stays where it is"
    );
    install.remove().await;
}

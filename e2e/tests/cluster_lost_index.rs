//! The whole index behind the alias lost, on the rig's node, while clients write through the API:
//! searches answer 503, the indexer's breaker opens, and the operator does not hide the loss
//! behind a new empty index: `Rebuilding` says `IndexLost` with the generation to raise. Raising
//! it rebuilds the index from MongoDB (the operator's Job), the breaker closes, and every
//! acknowledged write — those made while the index was gone too — is in MongoDB and in the index.

use std::time::Duration;

use e2e::cluster::{self, Install, Traffic};
use e2e::rig::rig;
use messagepipeline_crd::MessagePipeline;
use pipeline_contract::install::SearchEndpoint;
use serde_json::json;

const READY_WITHIN: Duration = Duration::from_secs(240);
/// The indexer's next bulk failing often enough to open the breaker, and a reconcile after it.
const NOTICED_WITHIN: Duration = Duration::from_secs(120);
const REBUILT_WITHIN: Duration = Duration::from_secs(240);
const CONVERGE_WITHIN: Duration = Duration::from_secs(120);

fn breaker(mp: &MessagePipeline) -> Option<&str> {
    mp.status.as_ref()?.breaker.as_deref()
}

/// The status of one search through the API, and its content type.
async fn search(base: &str) -> (u16, String) {
    let r = reqwest::Client::new()
        .get(format!("{base}/v1/search?q=message"))
        .bearer_auth(cluster::KEY)
        .send()
        .await
        .unwrap();
    let kind = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (r.status().as_u16(), kind)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_index_is_said_not_hidden_and_the_rebuild_brings_everything_back() {
    let install = Install::new("lost").await;
    let pipeline = install
        .ready_pipeline(
            "chat",
            rig().pod_endpoints().search_url,
            json!({"api": {"replicas": 1}, "indexer": {"replicas": 1}}),
            (1, 1),
            READY_WITHIN,
        )
        .await;
    pipeline
        .until(&install, "the index status", READY_WITHIN, |mp| {
            cluster::reason(mp, "Rebuilding") == Some("NoRebuild")
        })
        .await;
    let base = pipeline.api_base(&install).await;
    let traffic = Traffic::start(&base, 2, Duration::from_millis(20));
    traffic.progresses(100, Duration::from_secs(120)).await;

    let http = reqwest::Client::new();
    let engine = SearchEndpoint::new(rig().search_url());
    let first = format!("/{}-000001", pipeline.alias);
    let deleted = engine
        .request(&http, reqwest::Method::DELETE, &first)
        .send()
        .await
        .unwrap();
    assert!(deleted.status().is_success(), "{deleted:?}");

    let lost = pipeline
        .until(
            &install,
            "IndexLost and the breaker open",
            NOTICED_WITHIN,
            |mp| {
                cluster::reason(mp, "Rebuilding") == Some("IndexLost")
                    && breaker(mp) == Some("open")
            },
        )
        .await;
    let (status, kind) = search(&base).await;
    assert_eq!(
        (status, kind.as_str()),
        (503, "application/problem+json"),
        "searches without an index"
    );
    let rebuilding = lost
        .status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.type_ == "Rebuilding")
        .unwrap();
    assert!(
        rebuilding.message.contains("indexGeneration to 2"),
        "{rebuilding:?}"
    );
    assert_eq!(cluster::condition(&lost, "Degraded"), Some("True"));
    let recreated = engine
        .request(&http, reqwest::Method::HEAD, &first)
        .send()
        .await
        .unwrap();
    assert_eq!(
        recreated.status().as_u16(),
        404,
        "no empty index made in place of the lost one"
    );
    traffic.progresses(50, Duration::from_secs(120)).await;

    install
        .change_spec("chat", |spec| {
            spec["elasticsearch"]["indexGeneration"] = json!(2);
        })
        .await;
    pipeline
        .until(
            &install,
            "the rebuild complete, the breaker closed, Ready",
            REBUILT_WITHIN,
            |mp| {
                cluster::reason(mp, "Rebuilding") == Some("RebuildComplete")
                    && breaker(mp) == Some("closed")
                    && cluster::condition(mp, "Ready") == Some("True")
            },
        )
        .await;
    traffic.progresses(50, Duration::from_secs(120)).await;
    let (acked, writes, rate) = traffic.stop().await;
    assert_eq!(search(&base).await.0, 200);
    install
        .assert_events(&[
            "IndexLost",
            "RebuildStarted",
            "IndexSwapped",
            "RebuildComplete",
        ])
        .await;
    let documents = pipeline.verify(&acked, CONVERGE_WITHIN).await;
    eprintln!(
        "lost index: {writes} writes at {rate:.0}/s throughout, {documents} documents equal in \
         MongoDB and generation 2"
    );
    install.remove().await;
}

//! The operator managing many pipelines: BENCH_PIPELINES (default 200) MessagePipelines with
//! distinct topics, groups and aliases and no pods (`replicas: 0`), applied at once to the rig's
//! API server; the time until every one has converged (observedGeneration current, TopicsReady
//! and IndexTemplateReady True: every child applied, topics and index in place, status current),
//! how many reconciles that took, the operator's peak RSS (VmHWM) then and after a further
//! BENCH_STEADY_SECS (default 60) of periodic reconciles, and the time to delete them all
//! (deletionPolicy Delete: topics, templates and indices go). BENCH_OPERATOR_CONCURRENCY sets the
//! operator's `OPERATOR_CONCURRENCY`; BENCH_OPERATOR_LOG its `RUST_LOG`.
//!
//! Run with `make bench-operator` (= `cargo bench -p operator --bench pipelines`) while the rig is up.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use e2e::{rig::rig, unique};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use messagepipeline_crd::MessagePipeline;
use serde_json::json;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn converged(mp: &MessagePipeline) -> bool {
    let Some(status) = &mp.status else {
        return false;
    };
    let is_true = |t: &str| {
        status
            .conditions
            .iter()
            .any(|c| c.type_ == t && c.status == "True")
    };
    status.observed_generation == mp.metadata.generation
        && is_true("TopicsReady")
        && is_true("IndexTemplateReady")
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let count: usize = env_or("BENCH_PIPELINES", 200);
    let steady: u64 = env_or("BENCH_STEADY_SECS", 60);
    let client = rig().kube_client().await;
    let kubeconfig = rig().kubeconfig().to_owned();
    // The CRD as the chart ships it.
    let status = rig()
        .kubectl()
        .args(["apply", "--server-side", "--force-conflicts", "-f"])
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../crds/messagepipeline.yaml"
        ))
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "CRD applied");

    let namespace = unique("bench-op");
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": namespace}})).unwrap(),
        )
        .await
        .unwrap();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    for (name, key) in [("api-keys", "keys.yaml"), ("mongodb", "uri")] {
        secrets
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({
                "metadata": {"name": name}, "stringData": {key: "unused by the operator"}}))
                .unwrap(),
            )
            .await
            .unwrap();
    }
    let log = std::env::temp_dir().join(format!("{namespace}-operator.log"));
    let metrics_port = e2e::free_port();
    let http = reqwest::Client::new();
    // (reconciles started, their total seconds) so far.
    let reconciles = || {
        let http = http.clone();
        async move {
            let m = e2e::prometheus::scrape(&http, metrics_port)
                .await
                .unwrap_or_default();
            let get = |k: &str| m.get(k).copied().unwrap_or(f64::NAN);
            (
                get("operator_reconciles_total"),
                get("operator_reconcile_duration_seconds_sum"),
            )
        }
    };
    let mut operator = Command::new(env!("CARGO_BIN_EXE_operator"))
        .env("KUBECONFIG", &kubeconfig)
        .env("WATCH_NAMESPACE", &namespace)
        .env("POD_NAMESPACE", &namespace)
        .env("POD_NAME", "bench-operator")
        .envs(std::env::var("BENCH_OPERATOR_CONCURRENCY").map(|c| ("OPERATOR_CONCURRENCY", c)))
        .env("OPERATOR_HTTP_ADDR", format!("127.0.0.1:{metrics_port}"))
        .env(
            "RUST_LOG",
            std::env::var("BENCH_OPERATOR_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::from(std::fs::File::create(&log).unwrap()))
        .stderr(Stdio::null())
        .spawn()
        .expect("operator starts");

    let api: Api<MessagePipeline> = Api::namespaced(client.clone(), &namespace);
    let started = Instant::now();
    for i in 0..count {
        let mp: MessagePipeline = serde_json::from_value(json!({
            "apiVersion": "messagepipeline.io/v1alpha1", "kind": "MessagePipeline",
            "metadata": {"name": format!("p{i:03}")},
            "spec": {
                "image": "registry.example/message-pipeline:0.1.0",
                // No pods: this measures the operator, and 200 workers would not fit the rig's node.
                "api": {"replicas": 0, "auth": {"apiKeysSecretRef": {"name": "api-keys", "key": "keys.yaml"}}},
                "indexer": {"replicas": 0},
                // A collection is one pipeline's claim.
                "mongodb": {"uriSecretRef": {"name": "mongodb", "key": "uri"}, "database": format!("{namespace}-d{i:03}").replace('-', "_")},
                "kafka": {"bootstrapServers": rig().kafka(),
                          "topic": {"name": format!("{namespace}-t{i:03}"), "partitions": 3, "replicationFactor": 1},
                          "consumerGroup": format!("{namespace}-g{i:03}")},
                "elasticsearch": {"url": rig().search_url(), "alias": format!("{namespace}-a{i:03}"), "replicas": 0},
                "deletionPolicy": "Delete"
            }
        }))
        .unwrap();
        api.create(&PostParams::default(), &mp).await.unwrap();
    }
    let created = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(900);
    let converge = loop {
        let list = api.list(&ListParams::default()).await.unwrap();
        let done = list.items.iter().filter(|m| converged(m)).count();
        if done == count {
            break started.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "only {done}/{count} converged; operator log: {}",
            log.display()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let (runs, seconds) = reconciles().await;
    println!(
        "{count} pipelines applied in {:.1} s, all converged {:.1} s after the first was applied ({runs} reconciles, {:.2} per pipeline, {:.0} ms each on average)",
        created.as_secs_f64(),
        converge.as_secs_f64(),
        runs / count as f64,
        seconds / runs * 1000.0
    );
    println!(
        "operator peak RSS after converging: {:.1} MiB",
        e2e::memory::peak_rss_mib(operator.id())
    );
    tokio::time::sleep(Duration::from_secs(steady)).await;
    println!(
        "operator peak RSS after {steady} s more of periodic reconciles: {:.1} MiB",
        e2e::memory::peak_rss_mib(operator.id())
    );

    let deleting = Instant::now();
    api.delete_collection(&DeleteParams::default(), &ListParams::default())
        .await
        .unwrap();
    loop {
        if api
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
        {
            break;
        }
        assert!(
            deleting.elapsed() < Duration::from_secs(600),
            "deletion did not finish"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    println!(
        "all {count} deleted (topics, templates and indices removed) in {:.1} s",
        deleting.elapsed().as_secs_f64()
    );
    let _ = Command::new("kill")
        .args(["-TERM", &operator.id().to_string()])
        .status();
    let _ = operator.wait();
    let _ = Api::<Namespace>::all(client)
        .delete(&namespace, &DeleteParams::default())
        .await;
}

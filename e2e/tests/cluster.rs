//! The product on the rig's Kubernetes node, installed as users install it: the CRD applied
//! server-side, the operator from its chart with `helm` (a pod with the chart's RBAC and
//! in-cluster config), and a MessagePipeline whose api-servers and indexers run as pods of the
//! image `make image` imported. Each scenario asserts what users rely on, and ends with the same
//! two checks: every write a client saw acknowledged is in MongoDB, and the index equals MongoDB
//! document by document.
//!
//! The scenarios share one node and the rig's servers, so they run one at a time; each prints
//! its figures (writes, time to converge) on stderr. Upgrades (of the operator, of the workers'
//! image, to a bad image or spec) and pods killed under writes are classes of the fault suite
//! (`e2e/tests/faults`).

use std::time::{Duration, Instant};

use e2e::cluster::{self, Install, Traffic, condition, ready_with};
use e2e::proxy::TcpProxy;
use e2e::{kafka, rig::rig, wait};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use serde_json::json;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// From applying a pipeline to Ready=True: 4 worker pods of debug builds on a shared 2-core node.
const READY_WITHIN: Duration = Duration::from_secs(240);
/// For the index to catch up with MongoDB once writes stop.
const CONVERGE_WITHIN: Duration = Duration::from_secs(120);

/// The uid and mount facts of a container's main process, read from the kernel (/proc) by its
/// pod's uid: this machine is the node.
fn process_facts(pod: &Pod, binary: &str) -> Vec<(u32, bool)> {
    let uid = pod.metadata.uid.clone().unwrap();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let path = entry.path();
        let Ok(cmdline) = std::fs::read(path.join("cmdline")) else {
            continue;
        };
        let first = cmdline.split(|b| *b == 0).next().unwrap_or_default();
        if !String::from_utf8_lossy(first).ends_with(binary) {
            continue;
        }
        // The kubelet's cgroup path of a pod names its uid.
        let cgroup = std::fs::read_to_string(path.join("cgroup")).unwrap_or_default();
        if !cgroup.contains(&uid) && !cgroup.contains(&uid.replace('-', "_")) {
            continue;
        }
        let status = std::fs::read_to_string(path.join("status")).unwrap_or_default();
        let real_uid = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mountinfo = std::fs::read_to_string(path.join("mountinfo")).unwrap_or_default();
        // The root mount: mount point "/" (5th field), options (6th) start with "ro".
        let root_read_only = mountinfo.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 5 && f[4] == "/" && f[5].split(',').any(|o| o == "ro")
        });
        found.push((real_uid, root_read_only));
    }
    found
}

/// How many times the kubelet ran `probe` (Readiness or Liveness) successfully for `pod`, from
/// its /metrics/probes through the API server.
async fn probes_run(client: &kube::Client, pod: &Pod, probe: &str) -> u64 {
    let node = pod.spec.as_ref().unwrap().node_name.clone().unwrap();
    let request = http::Request::get(format!("/api/v1/nodes/{node}/proxy/metrics/probes"))
        .body(Vec::new())
        .unwrap();
    let text = client.request_text(request).await.expect("kubelet metrics");
    let name = pod.metadata.name.as_deref().unwrap();
    text.lines()
        .filter(|l| l.starts_with("prober_probe_total{"))
        .filter(|l| l.contains(&format!("pod=\"{name}\"")))
        .filter(|l| l.contains(&format!("probe_type=\"{probe}\"")))
        .filter(|l| l.contains("result=\"successful\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn installed_with_helm_it_becomes_ready_serves_through_its_service_and_runs_locked_down() {
    let _serial = SERIAL.lock().await;
    let started = Instant::now();
    let install = Install::new("cluster-install").await;
    let operator = install.operator_pods().await;
    assert_eq!(operator.len(), 1, "one operator pod");
    let pipeline = install
        .apply_pipeline("chat", rig().pod_endpoints().search_url, json!({}))
        .await;
    let applied = Instant::now();
    let mp = pipeline
        .until(
            &install,
            "Ready=True with 2/2 and 2/2",
            READY_WITHIN,
            |mp| ready_with(mp, 2, 2),
        )
        .await;
    let ready_after = applied.elapsed();
    let status = mp.status.unwrap();
    assert_eq!(
        (
            status.workers.api.summary.as_str(),
            status.workers.indexer.summary.as_str()
        ),
        ("2/2", "2/2")
    );
    // Availability is the Deployments' own, from the real controllers.
    for role in ["api", "indexer"] {
        let deployment = install
            .api::<Deployment>()
            .get(&format!("chat-{role}"))
            .await
            .unwrap();
        assert_eq!(
            deployment.status.unwrap().available_replicas,
            Some(2),
            "{role}"
        );
    }

    // Locked down for real: the kernel says non-root and a read-only root filesystem, and the
    // kubelet has run the probes.
    let client = install.client.clone();
    for (role, binary) in [("api", "api-server"), ("indexer", "indexer")] {
        for pod in pipeline.pods(&install, role).await {
            let facts = process_facts(&pod, binary);
            assert_eq!(
                facts,
                vec![(65532, true)],
                "{role} pod {:?}",
                pod.metadata.name
            );
            for probe in ["Readiness", "Liveness"] {
                let pod = pod.clone();
                wait::until(
                    &format!("the kubelet's {probe} probe of a {role} pod"),
                    Duration::from_secs(30),
                    || {
                        let (client, pod) = (client.clone(), pod.clone());
                        async move { (probes_run(&client, &pod, probe).await > 0).then_some(()) }
                    },
                )
                .await;
            }
        }
    }
    for pod in &operator {
        assert_eq!(
            process_facts(pod, "operator"),
            vec![(65532, true)],
            "operator pod"
        );
    }

    // Traffic through the api-server's Service: a write, a read, a search.
    let base = pipeline.api_base(&install).await;
    let traffic = Traffic::start(&base, 2, Duration::from_millis(20));
    traffic.progresses(50, Duration::from_secs(60)).await;
    let (acked, writes, rate) = traffic.stop().await;
    let http = reqwest::Client::new();
    let created: serde_json::Value = http
        .post(format!("{base}/v1/messages"))
        .bearer_auth(cluster::KEY)
        .json(&json!({"conversationId": uuid::Uuid::new_v4(), "senderId": uuid::Uuid::new_v4(), "content": "through the service"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    // Read back through the Service, then through the API server's port-forward to its
    // endpoints: how the scenarios reach it where this machine is not the node
    // (e2e/kind/run.sh).
    let forwarded = pipeline.api_forwarded(&install).await;
    for via in [&base, &forwarded] {
        let read = http
            .get(format!("{via}/v1/messages/{id}"))
            .bearer_auth(cluster::KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(read.status(), 200, "GET through {via}");
        let read: serde_json::Value = read.json().await.unwrap();
        assert_eq!(read["content"], "through the service", "{read}");
    }
    wait::until(
        "the message found by search",
        Duration::from_secs(60),
        || async {
            let found: serde_json::Value = http
                .get(format!("{base}/v1/search?q=service"))
                .bearer_auth(cluster::KEY)
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            found.to_string().contains(&id).then_some(())
        },
    )
    .await;
    let mut acked = acked;
    acked.insert(id.parse().unwrap(), (1, false));
    let documents = pipeline.verify(&acked, CONVERGE_WITHIN).await;

    // Deleted with deletionPolicy Delete: the workers, the topics, the index template and the index go.
    install
        .api::<messagepipeline_crd::MessagePipeline>()
        .delete("chat", &Default::default())
        .await
        .unwrap();
    wait::until(
        "the pipeline and its children gone",
        Duration::from_secs(120),
        || async {
            let mp = install
                .api::<messagepipeline_crd::MessagePipeline>()
                .get_opt("chat")
                .await
                .ok()?;
            let deployments = install
                .api::<Deployment>()
                .list(&Default::default())
                .await
                .ok()?;
            let pods = pipeline.pods(&install, "api").await.len()
                + pipeline.pods(&install, "indexer").await.len();
            (mp.is_none()
                && deployments.items.iter().all(|d| {
                    d.metadata
                        .name
                        .as_deref()
                        .is_some_and(|n| !n.starts_with("chat-"))
                })
                && pods == 0)
                .then_some(())
        },
    )
    .await;
    assert!(
        !kafka::topic_exists(&pipeline.topic),
        "events topic deleted"
    );
    assert!(
        !kafka::topic_exists(&format!("{}.dlq", pipeline.topic)),
        "DLQ deleted"
    );
    // The index template and the index go (the index is derived from MongoDB, which stays).
    let template = reqwest::get(format!(
        "{}/_index_template/{}-template",
        rig().search_url(),
        pipeline.alias
    ))
    .await
    .unwrap();
    assert_eq!(template.status(), 404, "index template deleted");
    let index = reqwest::get(format!("{}/{}-000001", rig().search_url(), pipeline.alias))
        .await
        .unwrap();
    assert_eq!(index.status(), 404, "index deleted");
    eprintln!(
        "cluster install: Ready after {ready_after:?} (install + pipeline {:?}); {writes} writes at {rate:.0}/s, {documents} documents equal in MongoDB and the index; deleted cleanly",
        started.elapsed()
    );
    install.remove().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_search_engine_stopped_opens_the_breaker_on_the_resource_and_the_pipeline_recovers() {
    let _serial = SERIAL.lock().await;
    let install = Install::new("cluster-outage").await;
    // The search engine as the pods see it: a proxy on the rig's bridge that the test cuts.
    let upstream = rig().search_url().trim_start_matches("http://").to_owned();
    let proxy = TcpProxy::start_on(rig().rig_address(), &upstream).await;
    let pipeline = install
        .ready_pipeline(
            "chat",
            &proxy.url(),
            json!({"indexer": {"breaker": {"failureThreshold": 3, "cooldownMs": 2000}, "retry": {"backoffMs": 100}}}),
            (2, 2),
            READY_WITHIN,
        )
        .await;
    let base = pipeline.api_base(&install).await;
    let traffic = Traffic::start(&base, 2, Duration::from_millis(20));
    traffic.progresses(50, Duration::from_secs(60)).await;

    let t = Instant::now();
    proxy.cut();
    let mp = pipeline
        .until(
            &install,
            "IndexerHealthy=False",
            Duration::from_secs(120),
            |mp| condition(mp, "IndexerHealthy") == Some("False"),
        )
        .await;
    let opened = t.elapsed();
    assert_eq!(condition(&mp, "Ready"), Some("False"));
    assert!(
        matches!(
            mp.status.as_ref().unwrap().breaker.as_deref(),
            Some("open" | "half-open")
        ),
        "{:?}",
        mp.status.as_ref().unwrap().breaker
    );
    // Writes go on while the index is unreachable.
    traffic.progresses(50, Duration::from_secs(60)).await;

    let t = Instant::now();
    proxy.restore();
    pipeline
        .until(
            &install,
            "IndexerHealthy=True and Ready=True",
            Duration::from_secs(120),
            |mp| condition(mp, "IndexerHealthy") == Some("True") && ready_with(mp, 2, 2),
        )
        .await;
    let recovered = t.elapsed();
    let (acked, writes, rate) = traffic.stop().await;
    let documents = pipeline.verify(&acked, CONVERGE_WITHIN).await;
    eprintln!(
        "cluster outage: breaker open on the resource {opened:?} after the cut, healthy again {recovered:?} after the restore; {writes} writes at {rate:.0}/s, {documents} documents equal in MongoDB and the index"
    );
    install.remove().await;
    drop(proxy);
}

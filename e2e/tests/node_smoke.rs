//! The rig's node runs pods as a cluster does: the Node is Ready, a Pod built from the rig's own
//! image (nothing can be pulled) starts as a non-root user with a read-only root filesystem,
//! passes its readiness probe, answers on its pod IP through the CNI bridge, its log is read
//! through the API server (which must authenticate to the kubelet), and deleting its namespace
//! stops it.

use std::time::Duration;

use e2e::{rig::rig, wait};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, LogParams, PostParams};
use serde_json::json;

/// Built by devstack/services/node.sh from devstack/node/pause.
const IMAGE: &str = "localhost/message-pipeline/pause:v1";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_runs_on_the_node_answers_on_its_ip_and_stops_with_its_namespace() {
    let client = rig().kube_client().await;
    let node = Api::<Node>::all(client.clone())
        .get(rig().node_name())
        .await
        .expect("the rig's node is registered");
    let ready = node
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.status);
    assert_eq!(ready.as_deref(), Some("True"), "node Ready");

    let namespace = rig().create_namespace(&client, "node-smoke").await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {
            "automountServiceAccountToken": false,
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "web",
                "image": IMAGE,
                "imagePullPolicy": "Never",
                "command": ["/pause", "-http", ":8080"],
                "securityContext": {
                    "runAsNonRoot": true,
                    "readOnlyRootFilesystem": true,
                    "allowPrivilegeEscalation": false,
                    "capabilities": {"drop": ["ALL"]},
                },
                "readinessProbe": {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1},
            }],
        },
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let ip = wait::until("the pod Ready", Duration::from_secs(60), || async {
        let pod = pods.get("web").await.ok()?;
        let status = pod.status?;
        let ready = status
            .conditions?
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        ready.then_some(status.pod_ip?)
    })
    .await;
    let scheduled_on = pods.get("web").await.unwrap().spec.unwrap().node_name;
    assert_eq!(
        scheduled_on.as_deref(),
        Some(rig().node_name()),
        "scheduled"
    );

    let body = reqwest::get(format!("http://{ip}:8080/"))
        .await
        .expect("the pod answers on its IP")
        .text()
        .await
        .unwrap();
    assert_eq!(body, "ok\n");
    // Through the API server to the kubelet (authenticated both ways); the program logs nothing.
    let log = pods
        .logs("web", &LogParams::default())
        .await
        .expect("pod log");
    assert!(log.is_empty(), "{log}");

    rig().delete_namespace(&client, &namespace).await;
    wait::until("the pod gone", Duration::from_secs(60), || async {
        pods.get_opt("web").await.ok()?.is_none().then_some(())
    })
    .await;
    wait::until(
        "its IP no longer answers",
        Duration::from_secs(30),
        || async {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(1))
                .build()
                .unwrap();
            http.get(format!("http://{ip}:8080/"))
                .send()
                .await
                .is_err()
                .then_some(())
        },
    )
    .await;
}

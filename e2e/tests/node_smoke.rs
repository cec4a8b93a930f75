//! The rig's node runs pods as a cluster does: the Node is Ready, a Pod built from the rig's own
//! image (nothing can be pulled) starts as a non-root user with a read-only root filesystem,
//! passes its readiness probe, answers on its pod IP through the CNI bridge, its log is read
//! through the API server (which must authenticate to the kubelet), and deleting its namespace
//! stops it. A Deployment gets available pods from the real controllers, with their
//! ServiceAccount token mounted, its Service routes to them (from this host by its ClusterIP,
//! from a pod by its name through the cluster DNS), and a deleted pod is replaced.

use std::time::Duration;

use e2e::{rig::rig, wait};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, ListParams, LogParams, PostParams};
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_gets_available_pods_its_service_routes_to_them_and_a_killed_pod_is_replaced()
{
    let client = rig().kube_client().await;
    let namespace = rig().create_namespace(&client, "node-deploy").await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &namespace);
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
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
            },
        },
    }))
    .unwrap();
    deployments
        .create(&PostParams::default(), &deployment)
        .await
        .unwrap();
    let services: Api<Service> = Api::namespaced(client.clone(), &namespace);
    let service: Service = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]},
    }))
    .unwrap();
    services
        .create(&PostParams::default(), &service)
        .await
        .unwrap();

    let available = || async {
        let status = deployments.get("web").await.ok()?.status?;
        (status.available_replicas == Some(2)).then_some(())
    };
    wait::until("2/2 replicas available", Duration::from_secs(90), available).await;

    // In-cluster config works in these pods: the token is mounted and the CA published.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let listed = pods
        .list(&ListParams::default().labels("app=web"))
        .await
        .unwrap();
    assert_eq!(listed.items.len(), 2);
    for pod in &listed.items {
        let mounts = pod.spec.as_ref().unwrap().containers[0]
            .volume_mounts
            .clone()
            .unwrap_or_default();
        assert!(
            mounts
                .iter()
                .any(|m| m.mount_path == "/var/run/secrets/kubernetes.io/serviceaccount"),
            "the ServiceAccount token is mounted: {mounts:?}"
        );
    }
    let ca = Api::<ConfigMap>::namespaced(client.clone(), &namespace)
        .get("kube-root-ca.crt")
        .await
        .expect("the root CA is published in the namespace");
    assert!(ca.data.unwrap_or_default().contains_key("ca.crt"));

    // The Service: its EndpointSlice lists both pods, and its ClusterIP answers from this host
    // (kube-proxy's rules).
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), &namespace);
    wait::until("2 ready endpoints", Duration::from_secs(30), || async {
        let list = slices
            .list(&ListParams::default().labels("kubernetes.io/service-name=web"))
            .await
            .ok()?;
        let ready = list
            .items
            .iter()
            .flat_map(|s| s.endpoints.iter())
            .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
            .count();
        (ready == 2).then_some(())
    })
    .await;
    let ip = services
        .get("web")
        .await
        .unwrap()
        .spec
        .unwrap()
        .cluster_ip
        .unwrap();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let body = wait::until("the Service answers", Duration::from_secs(30), || async {
        http.get(format!("http://{ip}/"))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()
    })
    .await;
    assert_eq!(body, "ok\n");

    // From a pod, by name: the cluster DNS (CoreDNS on the rig's bridge, the kubelet's
    // clusterDNS) resolves the short name through the pod's search path and the full name, and
    // the Service's rules route to an endpoint.
    let fqdn = format!("http://web.{namespace}.svc.cluster.local/");
    let client_pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "by-name"},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": false,
            "containers": [{
                "name": "get",
                "image": IMAGE,
                "imagePullPolicy": "Never",
                "command": ["/pause", "-get", "http://web/", fqdn],
                "securityContext": {
                    "runAsNonRoot": true,
                    "readOnlyRootFilesystem": true,
                    "allowPrivilegeEscalation": false,
                    "capabilities": {"drop": ["ALL"]},
                },
            }],
        },
    }))
    .unwrap();
    let (phase, log) = run_to_end(&pods, &client_pod).await;
    assert_eq!(phase, "Succeeded", "the pod's output: {log}");
    assert_eq!(log, format!("http://web/ ok\n{fqdn} ok\n"));

    // Nothing leaves the machine: a pod's connection to an address off it (TEST-NET-3) is
    // rejected by this machine's FORWARD rule, not answered by whatever the default route leads
    // to.
    let mut off_machine = client_pod.clone();
    off_machine.metadata.name = Some("off-machine".to_owned());
    off_machine.spec.as_mut().unwrap().containers[0].command = Some(
        ["/pause", "-get", "http://203.0.113.1/"]
            .map(String::from)
            .to_vec(),
    );
    let (phase, log) = run_to_end(&pods, &off_machine).await;
    assert_eq!(phase, "Failed", "{log}");
    assert!(log.contains("connection refused"), "{log}");

    // A pod force-deleted: the ReplicaSet replaces it.
    let victim = listed.items[0].metadata.name.clone().unwrap();
    pods.delete(&victim, &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    wait::until(
        "a replacement pod, 2/2 available again",
        Duration::from_secs(90),
        || async {
            let list = pods
                .list(&ListParams::default().labels("app=web"))
                .await
                .ok()?;
            let replaced = list
                .items
                .iter()
                .all(|p| p.metadata.name.as_deref() != Some(victim.as_str()));
            let status = deployments.get("web").await.ok()?.status?;
            (replaced && list.items.len() == 2 && status.available_replicas == Some(2))
                .then_some(())
        },
    )
    .await;
    rig().delete_namespace(&client, &namespace).await;
}

/// Creates `pod` (restartPolicy Never) and waits until it has ended; its phase (`Succeeded` or
/// `Failed`) and its log.
async fn run_to_end(pods: &Api<Pod>, pod: &Pod) -> (String, String) {
    let name = pod.metadata.name.clone().unwrap();
    pods.create(&PostParams::default(), pod).await.unwrap();
    let phase = wait::until(
        &format!("pod {name} to end"),
        Duration::from_secs(60),
        || async {
            let phase = pods.get(&name).await.ok()?.status?.phase?;
            matches!(phase.as_str(), "Succeeded" | "Failed").then_some(phase)
        },
    )
    .await;
    let log = pods
        .logs(&name, &LogParams::default())
        .await
        .unwrap_or_else(|e| format!("(no log: {e})"));
    (phase, log)
}

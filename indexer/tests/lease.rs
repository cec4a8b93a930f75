//! The indexer binary's worker Lease on the rig's API server: labels, `ready=true` once it
//! consumes, `breaker=closed`, and gone after a clean stop.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::Fixture;
use e2e::{rig::rig, unique, wait};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_indexer_holds_its_lease_while_it_runs() {
    let fixture = Fixture::new(None).await;
    let client = rig().kube_client().await;
    let namespace = rig().create_namespace(&client, "lease-indexer").await;
    let kubeconfig = rig().kubeconfig().to_owned();
    let port = e2e::free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_indexer"))
        .arg("run")
        .env("KAFKA_BOOTSTRAP_SERVERS", rig().kafka())
        .env("KAFKA_TOPIC", &fixture.topic)
        .env("KAFKA_DLQ_TOPIC", &fixture.dlq)
        .env("KAFKA_CONSUMER_GROUP", unique("lease-group"))
        .env("ELASTICSEARCH_URL", rig().search_url())
        .env("ELASTICSEARCH_ALIAS", fixture.layout.alias())
        .env("HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("MP_PIPELINE_NAME", "orders")
        .env("MP_PIPELINE_NAMESPACE", &namespace)
        .env("POD_NAME", "orders-indexer-0")
        .env("KUBECONFIG", &kubeconfig)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let leases: Api<Lease> = Api::namespaced(client.clone(), &namespace);
    let lease = wait::until(
        "the indexer's Lease, ready",
        Duration::from_secs(60),
        || async {
            let l = leases
                .get_opt("orders-indexer-orders-indexer-0")
                .await
                .unwrap()?;
            let ready = l
                .metadata
                .annotations
                .as_ref()?
                .get("messagepipeline.io/ready")?
                == "true";
            ready.then_some(l)
        },
    )
    .await;
    let labels = lease.metadata.labels.unwrap();
    assert_eq!(labels["messagepipeline.io/role"], "indexer");
    assert_eq!(
        lease.metadata.annotations.unwrap()["messagepipeline.io/breaker"],
        "closed"
    );

    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    assert!(child.wait().unwrap().success(), "clean exit");
    assert!(
        leases
            .get_opt("orders-indexer-orders-indexer-0")
            .await
            .unwrap()
            .is_none(),
        "deleted on a clean stop"
    );
    rig().delete_namespace(&client, &namespace).await;
}

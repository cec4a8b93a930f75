//! A Kafka outage must not fail API writes: with the rig's Kafka stopped, creates, updates and
//! deletes still succeed (MongoDB has them), `/ready` stays green, the relay's lag grows and the
//! worker Lease says so (`messagepipeline.io/relay-backlog`); once Kafka is back every change is
//! published and the Lease says `clear` again.
//!
//! This test stops the shared Kafka, so it lives alone in its test binary (cargo runs test
//! binaries one after another) and starts Kafka again even when it fails.

mod common;

use std::time::Duration;

use common::{KEY_A, KafkaDown, Server, Setup, converged, metric};
use e2e::{rig::rig, wait};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use reqwest::StatusCode;
use serde_json::json;
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_succeed_while_kafka_is_down_and_are_published_when_it_returns() {
    let setup = Setup::new("outage").await;
    let client = rig().kube_client().await;
    let namespace = rig().create_namespace(&client, "outage").await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), &namespace);
    let backlog = async || {
        let lease = leases.get_opt("orders-api-orders-api-0").await.ok()??;
        lease
            .metadata
            .annotations?
            .get("messagepipeline.io/relay-backlog")
            .cloned()
    };
    // Short delivery timeout, so the outage goes through the relay's own retry path too.
    let server = Server::start_with(
        &setup,
        &[
            ("RELAY_MESSAGE_TIMEOUT_MS", "3000"),
            ("MP_PIPELINE_NAME", "orders"),
            ("MP_PIPELINE_NAMESPACE", namespace.as_str()),
            ("POD_NAME", "orders-api-0"),
            ("KUBECONFIG", rig().kubeconfig()),
        ],
    )
    .await;
    wait::until("the Lease says clear", Duration::from_secs(30), || async {
        (backlog().await.as_deref() == Some("clear")).then_some(())
    })
    .await;
    let a = server.client(KEY_A);
    a.create(Uuid::new_v4(), "before the outage").await;
    converged(&setup, Duration::from_secs(30)).await;

    let outage = KafkaDown::stop();
    let mut ids = Vec::new();
    for i in 0..30 {
        let m = a
            .create(Uuid::new_v4(), &format!("during the outage {i}"))
            .await;
        ids.push(m["id"].as_str().unwrap().to_owned());
    }
    for id in ids.iter().take(10) {
        let reply = a
            .patch(
                id,
                &json!({"content": "edited in the outage"}),
                Some("\"1\""),
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    }
    for id in ids.iter().skip(25) {
        assert_eq!(a.delete(id, None).await.status, StatusCode::NO_CONTENT);
    }
    let ready = reqwest::get(format!("{}/ready", server.base))
        .await
        .unwrap();
    assert_eq!(
        ready.status(),
        StatusCode::OK,
        "Kafka is not part of readiness"
    );
    // Past one delivery timeout: sends have failed and are being retried.
    e2e::wait::until("relay lag above 4 s", Duration::from_secs(30), || async {
        (metric(&server, "api_relay_lag_seconds")
            .await
            .unwrap_or(0.0)
            > 4.0)
            .then_some(())
    })
    .await;
    wait::until(
        "the Lease says over-10s",
        Duration::from_secs(60),
        || async { (backlog().await.as_deref() == Some("over-10s")).then_some(()) },
    )
    .await;
    assert!(
        metric(&server, "api_relay_unpublished{age=\"over-10s\"}")
            .await
            .unwrap_or(0.0)
            >= 1.0,
        "the metric counts them by age"
    );
    drop(outage);

    let published = converged(&setup, Duration::from_secs(120)).await;
    assert_eq!(published.len(), 31);
    assert_eq!(
        published.values().filter(|(_, deleted)| *deleted).count(),
        5
    );
    assert_eq!(
        published
            .values()
            .filter(|&&(v, deleted)| v == 2 && !deleted)
            .count(),
        10
    );
    e2e::wait::until("relay lag back to 0", Duration::from_secs(30), || async {
        (metric(&server, "api_relay_lag_seconds").await == Some(0.0)).then_some(())
    })
    .await;
    wait::until(
        "the Lease says clear again",
        Duration::from_secs(30),
        || async { (backlog().await.as_deref() == Some("clear")).then_some(()) },
    )
    .await;
    drop(server);
    rig().delete_namespace(&client, &namespace).await;
}

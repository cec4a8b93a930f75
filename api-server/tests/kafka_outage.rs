//! A Kafka outage must not fail API writes: with the rig's Kafka stopped, creates, updates and
//! deletes still succeed (MongoDB has them), `/ready` stays green, the relay's lag grows; once
//! Kafka is back every change is published.
//!
//! This test stops the shared Kafka, so it lives alone in its test binary (cargo runs test
//! binaries one after another) and starts Kafka again even when it fails.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::{KEY_A, Server, Setup, converged};
use reqwest::StatusCode;
use serde_json::json;
use uuid::Uuid;

fn devstack(script: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../devstack")
        .join(script);
    let status = Command::new("bash")
        .arg(&path)
        .arg("kafka")
        .status()
        .expect("devstack runs");
    assert!(status.success(), "devstack/{script} kafka failed");
}

/// Starts Kafka again when dropped, whatever happened in between.
struct KafkaDown;

impl KafkaDown {
    fn stop() -> Self {
        devstack("down");
        Self
    }
}

impl Drop for KafkaDown {
    fn drop(&mut self) {
        devstack("up");
    }
}

async fn relay_lag_seconds(server: &Server) -> f64 {
    let text = reqwest::get(format!("{}/metrics", server.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("api_relay_lag_seconds "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_succeed_while_kafka_is_down_and_are_published_when_it_returns() {
    let setup = Setup::new("outage").await;
    // Short delivery timeout, so the outage goes through the relay's own retry path too.
    let server = Server::start_with(&setup, &[("RELAY_MESSAGE_TIMEOUT_MS", "3000")]).await;
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
        (relay_lag_seconds(&server).await > 4.0).then_some(())
    })
    .await;
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
        (relay_lag_seconds(&server).await == 0.0).then_some(())
    })
    .await;
}

//! kill -9 of the indexer process in the middle of its work, then a restart: nothing is lost
//! and nothing regresses, because offsets are committed only after a batch is durable and
//! documents carry external versions.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Fixture, converge, event_record, history};
use e2e::state::newest;
use e2e::{rig::rig, unique, wait};
use uuid::Uuid;

fn spawn_indexer(fixture: &Fixture, group: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_indexer"))
        .arg("run")
        .env("KAFKA_BOOTSTRAP_SERVERS", rig().kafka())
        .env("KAFKA_TOPIC", &fixture.topic)
        .env("KAFKA_DLQ_TOPIC", &fixture.dlq)
        .env("KAFKA_CONSUMER_GROUP", group)
        .env("ELASTICSEARCH_URL", rig().search_url())
        .env("ELASTICSEARCH_ALIAS", fixture.layout.alias())
        .env("INDEXER_BATCH_MAX_COUNT", "25")
        .env("INDEXER_BATCH_LINGER_MS", "20")
        .env("HTTP_ADDR", "127.0.0.1:0")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the indexer binary")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_minus_nine_mid_batch_loses_nothing_and_regresses_nothing() {
    let fixture = Fixture::new(None).await;
    let mut events = Vec::new();
    for i in 0..400u64 {
        events.extend(history(Uuid::new_v4(), i % 4, i % 7 == 0));
    }
    let expected = newest(&events);
    fixture
        .produce(&events.iter().map(event_record).collect::<Vec<_>>())
        .await;
    let group = unique("idx-crash");

    // Kill it twice while it is part-way through, then let a third run finish.
    for round in 0..2 {
        let mut child = spawn_indexer(&fixture, &group);
        let seen = wait::until(
            "the indexer to be part-way through",
            Duration::from_secs(60),
            || async {
                let n = fixture.documents().await.len();
                (n > round * 100).then_some(n)
            },
        )
        .await;
        child.kill().expect("SIGKILL");
        child.wait().unwrap();
        assert!(
            seen < expected.len(),
            "round {round}: finished before the kill; the test proves nothing"
        );
    }
    let mut child = spawn_indexer(&fixture, &group);
    converge(
        &fixture,
        &expected,
        "every message at its newest version after two kill -9",
    )
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
}

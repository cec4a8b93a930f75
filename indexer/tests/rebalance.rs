//! A second indexer joins the group while events keep arriving: partitions move between the two
//! while bulk requests are in flight. Each commits what is durable of the partitions it gives up
//! and drops the rest, which their new owner repeats; nothing is lost, nothing regresses, and
//! once both are idle the group's commits reach the end of every partition.

mod common;

use std::time::Duration;

use common::{Fixture, converge, event_record, history};
use e2e::kafka::{committed_total, end_offsets_total};
use e2e::state::newest;
use e2e::{unique, wait};
use pipeline_contract::MessageEvent;
use uuid::Uuid;

/// The histories of `messages` new messages over `conversations` (so over every partition).
fn wave(messages: u64, conversations: &[Uuid]) -> Vec<MessageEvent> {
    (0..messages)
        .flat_map(|i| {
            history(
                conversations[i as usize % conversations.len()],
                i % 4,
                i % 9 == 0,
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebalance_mid_stream_loses_nothing_and_commits_everything() {
    let fixture = Fixture::new(None).await;
    let conversations: Vec<Uuid> = (0..30).map(|_| Uuid::new_v4()).collect();
    let group = unique("idx-rebalance");

    let mut produced = wave(300, &conversations);
    fixture
        .produce(&produced.iter().map(event_record).collect::<Vec<_>>())
        .await;
    let (one, stop_one, task_one) = fixture.start(&group);
    wait::until(
        "the first indexer to be part-way through",
        Duration::from_secs(60),
        || async { (one.indexed.get() > 0).then_some(()) },
    )
    .await;

    // The second joins while waves keep coming, every 200 ms, until it has taken partitions
    // over and consumed from them, and for three waves more.
    let (two, stop_two, task_two) = fixture.start(&group);
    let mut waves_after_join = 0;
    while waves_after_join < 3 {
        let next = wave(40, &conversations);
        fixture
            .produce(&next.iter().map(event_record).collect::<Vec<_>>())
            .await;
        produced.extend(next);
        if two.consumed.get() > 0 {
            waves_after_join += 1;
        }
        assert!(
            produced.len() < 15_000,
            "the second indexer never got partitions"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        one.consumed.get() > 0 && two.consumed.get() > 0,
        "both indexers consumed"
    );

    converge(
        &fixture,
        &newest(&produced),
        "every message at its newest version after the rebalance",
    )
    .await;
    wait::until(
        "the group's commits to reach the end of every partition",
        Duration::from_secs(30),
        || async {
            (committed_total(&group, &fixture.topic) == end_offsets_total(&fixture.topic))
                .then_some(())
        },
    )
    .await;
    assert_eq!(one.dead_lettered_total() + two.dead_lettered_total(), 0);
    assert!(
        one.consumed.get() + two.consumed.get() >= produced.len() as u64,
        "together they consumed every record at least once"
    );
    stop_one.cancel();
    stop_two.cancel();
    task_one.await.unwrap();
    task_two.await.unwrap();
}

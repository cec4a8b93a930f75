//! A search-engine outage seen by the indexer only (through a proxy the test cuts, so the shared
//! engine stays up for everyone else): the breaker opens, nothing is dead-lettered or committed,
//! lag grows while the group membership is kept; once the proxy is back the breaker closes and
//! every event is indexed at its newest version.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{Fixture, converge, event_record, history, members};
use e2e::kafka::{committed_total, end_offsets_total};
use e2e::proxy::TcpProxy;
use e2e::state::newest;
use e2e::{rig::rig, unique, wait};
use indexer::breaker::BreakerState;
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_opens_during_an_outage_and_nothing_is_lost() {
    let fixture = Fixture::new(None).await;
    let upstream = rig().search_url().trim_start_matches("http://").to_owned();
    let proxy = TcpProxy::start(&upstream).await;
    let group = unique("idx-outage");
    let mut args = fixture.args(&group);
    args.engine.search_url = proxy.url();
    args.request_timeout_ms = 2000;
    args.breaker_failure_threshold = 2;
    args.breaker_cooldown_ms = 1000;
    let (metrics, token, task) = fixture.start_with(args);

    // Before: a first wave is indexed and committed.
    let conversation = Uuid::new_v4();
    let mut first = Vec::new();
    for i in 0..20 {
        first.extend(history(conversation, i % 3, false));
    }
    let expected = newest(&first);
    fixture
        .produce(&first.iter().map(event_record).collect::<Vec<_>>())
        .await;
    converge(&fixture, &expected, "the first wave to be indexed").await;
    wait::until(
        "the first wave to be committed",
        Duration::from_secs(30),
        || async { (committed_total(&group, &fixture.topic) == first.len() as i64).then_some(()) },
    )
    .await;

    // Outage: the indexer cannot reach the engine; a second wave keeps arriving.
    proxy.cut();
    let mut second = Vec::new();
    for i in 0..30 {
        second.extend(history(Uuid::new_v4(), i % 2, i % 5 == 0));
    }
    let expected: HashMap<_, _> = newest(&[first.as_slice(), second.as_slice()].concat());
    fixture
        .produce(&second.iter().map(event_record).collect::<Vec<_>>())
        .await;
    wait::until("the breaker to open", Duration::from_secs(60), || async {
        metrics.breaker_is(BreakerState::Open).then_some(())
    })
    .await;
    let opened = Instant::now();
    // The lag, as Kafka sees it: every event of the second wave is waiting, uncommitted.
    assert_eq!(
        end_offsets_total(&fixture.topic) - committed_total(&group, &fixture.topic),
        second.len() as i64,
        "the lag should be exactly the events produced during the outage"
    );
    // Stay out longer than the session timeout (10 s): membership must survive on polling alone.
    wait::until(
        "a session timeout to pass while the breaker is open",
        Duration::from_secs(30),
        || async {
            assert!(
                !metrics.breaker_is(BreakerState::Closed),
                "the breaker closed while the engine was unreachable"
            );
            (opened.elapsed() > Duration::from_secs(11)).then_some(())
        },
    )
    .await;
    assert_eq!(
        metrics.dead_lettered_total(),
        0,
        "an outage must never dead-letter"
    );
    assert_eq!(
        committed_total(&group, &fixture.topic),
        first.len() as i64,
        "nothing may be committed while open"
    );
    assert_eq!(
        members(&group),
        1,
        "the indexer left its consumer group during the outage"
    );
    assert!(metrics.breaker_failures.get() >= 2);

    // Recovery: the breaker closes and every event lands at its newest version.
    proxy.restore();
    converge(
        &fixture,
        &expected,
        "every event to be indexed after the outage",
    )
    .await;
    wait::until("the breaker to close", Duration::from_secs(30), || async {
        metrics.breaker_is(BreakerState::Closed).then_some(())
    })
    .await;
    wait::until(
        "everything to be committed",
        Duration::from_secs(30),
        || async {
            (committed_total(&group, &fixture.topic) == (first.len() + second.len()) as i64)
                .then_some(())
        },
    )
    .await;
    assert_eq!(metrics.dead_lettered_total(), 0);
    token.cancel();
    task.await.unwrap();
}

//! Property 1 (no dual-write loss) against clients that hang up. Under load from 16 writers, 400
//! creates with an `Idempotency-Key`, 50 PATCHes and 50 DELETEs are each reset a few
//! milliseconds after they went out (0–3 ms), before any answer; every create is then retried with its key
//! and body. Afterwards every message MongoDB holds is on the topic at its MongoDB version: the
//! obligation to publish belongs to the write, not to the request that carried it.

mod common;

use std::time::{Duration, Instant};

use common::{KEY_A, Server, Setup};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clients_that_hang_up_mid_request_under_load_lose_no_change() {
    let setup = Setup::new("hangup").await;
    let server = Server::start(&setup).await;
    let load = e2e::cluster::Traffic::start_as(&server.base, KEY_A, 16, Duration::ZERO);
    let started = Instant::now();
    let round =
        e2e::hangup::round(&server.base, KEY_A, 400, 50, Duration::from_millis(3), 32).await;
    let (_, writes, _) = load.stop().await;
    // Every message MongoDB holds on the topic at its version, within a minute.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (stored, published) = loop {
        let stored = setup.stored().await;
        let published = tokio::task::block_in_place(|| setup.published());
        if stored == published || Instant::now() >= deadline {
            break (stored, published);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let missing: Vec<_> = stored
        .iter()
        .filter(|(id, v)| published.get(id) != Some(v))
        .collect();
    let retried_missing = round
        .acked
        .keys()
        .filter(|id| !published.contains_key(id))
        .count();
    assert!(
        missing.is_empty(),
        "{} of {} stored messages not on the topic at their version after a minute ({retried_missing} of the {} creates acknowledged on retry never published), e.g. {:?}",
        missing.len(),
        stored.len(),
        round.acked.len(),
        &missing[..missing.len().min(3)]
    );
    eprintln!(
        "{} creates, {} patches and {} deletes hung up under {} writes of load; {} retries answered 201 ({} replayed); every one of the {} stored messages on the topic at its version ({:?})",
        round.creates,
        round.patches,
        round.deletes,
        writes,
        round.retried,
        round.replayed,
        published.len(),
        started.elapsed()
    );
}

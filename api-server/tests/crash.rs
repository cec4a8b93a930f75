//! Property 1 (no dual-write loss): under a steady stream of creates, updates and deletes the
//! api-server is killed with SIGKILL at random moments and restarted; afterwards, for every
//! message, the highest version on the topic equals its version in MongoDB, every tombstone's
//! delete event is on the topic, and every change a client saw acknowledged is in MongoDB.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use common::{Acked, Server, Setup, converged, writer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_moments_loses_no_acknowledged_change() {
    let setup = Setup::new("crash").await;
    let mut server = Server::start(&setup).await;
    let base = Arc::new(RwLock::new(vec![server.base.clone()]));
    let acked: Acked = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..6)
        .map(|_| {
            tokio::spawn(writer(
                base.clone(),
                acked.clone(),
                stop.clone(),
                done.clone(),
                Duration::ZERO,
            ))
        })
        .collect();

    let kills = 5;
    for round in 0..kills {
        let before = done.load(Ordering::Relaxed);
        // Let the load reach the new process, then kill it at a random moment.
        e2e::wait::until(
            "writes acknowledged by this process",
            Duration::from_secs(30),
            || {
                let done = done.clone();
                async move { (done.load(Ordering::Relaxed) >= before + 20).then_some(()) }
            },
        )
        .await;
        tokio::time::sleep(Duration::from_millis(fastrand::u64(0..1500))).await;
        server.kill9();
        eprintln!(
            "round {round}: killed after {} acknowledged writes",
            done.load(Ordering::Relaxed)
        );
        server = Server::start(&setup).await;
        *base.write().unwrap() = vec![server.base.clone()];
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }

    let published = converged(&setup, Duration::from_secs(90)).await;
    let stored = setup.stored().await;
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 50, "enough load: {} messages", acked.len());
    assert!(stored.values().any(|&(_, deleted)| deleted), "some deletes");
    assert!(stored.values().any(|&(v, _)| v > 2), "some updates");
    for (id, (version, deleted)) in &acked {
        let (stored_version, stored_deleted) = stored[id];
        assert!(
            stored_version >= *version,
            "{id}: acked v{version}, stored v{stored_version}"
        );
        if *deleted {
            assert!(stored_deleted, "{id}: acked delete not stored");
            assert_eq!(published[id], (stored_version, true), "{id}: delete event");
        }
    }
    eprintln!(
        "{} acknowledged writes over {} messages, {kills} kills; topic and MongoDB agree",
        done.load(Ordering::Relaxed),
        stored.len()
    );
}

//! Clients that hang up: creates (each with an `Idempotency-Key`), PATCHes and DELETEs reset a few
//! milliseconds after they went out, while other clients keep the api-servers busy; then every
//! create retried with its key and body, as a client that comes back does.

use std::time::{Duration, Instant};

use e2e::cluster::{KEY, Traffic};

use crate::Figures;
use crate::world::World;

pub async fn run(world: &World) -> Figures {
    let started = Instant::now();
    let base = world.base().await;
    let traffic = Traffic::start(&base, 8, Duration::ZERO);
    traffic.progresses(50, Duration::from_secs(60)).await;
    let (creates, changes) = if world.full { (1_000, 100) } else { (200, 20) };
    let round =
        e2e::hangup::round(&base, KEY, creates, changes, Duration::from_millis(3), 32).await;
    let (mut acked, writes, _) = traffic.stop().await;
    acked.extend(round.acked.iter().map(|(id, v)| (*id, *v)));
    let documents = world.check("disconnects", &acked).await;
    Figures {
        class: "disconnects",
        seconds: started.elapsed().as_secs_f64(),
        writes: writes + round.retried as u64,
        faults: format!(
            "{} creates, {} PATCHes and {} DELETEs reset 0-3 ms after they went out under 8 writers; {} retries answered 201 ({} replayed)",
            round.creates, round.patches, round.deletes, round.retried, round.replayed
        ),
        documents,
    }
}

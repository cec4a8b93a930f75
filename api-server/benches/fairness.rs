//! What one tenant at its limit does to another tenant's freshness, on the rig: the time from
//! each of tenant B's 201s to the message being returned by B's `/v1/search`, while B writes at
//! a trickle, with and without tenant A flooding the same api-server.
//!
//! 1. The api-server (release) with tenant limits off, and the indexer (release, from the same
//!    target directory; `cargo build --release -p indexer` first, as `make bench-fairness` does)
//!    on a fresh database, topic and index. Capacity: closed-loop creates of tenant A at
//!    concurrency BENCH_FLOOD_CONCURRENCY (32) for BENCH_SECS (8).
//! 2. The api-server again with every tenant limited to BENCH_LIMIT_SHARE (0.5) of that capacity
//!    per second (burst: one second of it).
//! 3. BENCH_ROUNDS (3) rounds of three phases of BENCH_SECS each: B creates BENCH_TRICKLE (20)
//!    messages a second, open loop, in a conversation of its own per phase, and a watcher polls
//!    B's `/v1/search?conversationId=…` every 20 ms. Quiet: B alone. Limit: A offers 1.2× its
//!    limit, open loop (a client at its limit). Hammer: A runs BENCH_FLOOD_CONCURRENCY closed
//!    loops, each sending the next create as soon as an answer (201 or 429) comes (a client that
//!    ignores `Retry-After`). Per phase: B's freshness p50 / p99 / max (201 → first seen; the
//!    watcher's period bounds the error), B's refusals, A's accepted and refused rates.
//! 4. Medians over rounds, and the medians of per-round ratios of B's p99 to the quiet phase's,
//!    next to the index's refresh interval (1 s), which dominates freshness.
//!
//! Run with `make bench-fairness` while the rig is up.

mod freshness;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use freshness::{Flood, Phase, Setup, env_or, flood, median, phase, stop};

/// Closed-loop creates of A, limits off: the API's capacity in creates/s.
async fn capacity(http: &reqwest::Client, base: &str, concurrency: usize, secs: f64) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let loops = flood(http, base, Flood::Hammer(concurrency), &stop);
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut ok = 0;
    for l in loops {
        ok += l.await.unwrap().0;
    }
    ok as f64 / started.elapsed().as_secs_f64()
}

fn print_phase(round: usize, what: &str, p: &Phase) {
    println!(
        "  round {round} {what:<6}: B freshness p50 {:.3} s  p99 {:.3} s  max {:.3} s  (B sent {}, refused {}, unseen {})  A {:>6.0} accepted/s, {:>6.0} refused/s; B's search p99 {:.3} s, indexer freshness p99 ≤ {:.3} s",
        p.p50,
        p.p99,
        p.max,
        p.b_sent,
        p.b_refused,
        p.b_unseen,
        p.a_ok_rate,
        p.a_refused_rate,
        p.search_p99,
        p.indexer_p99
    );
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` asks for the list of tests; there are none.
    }
    let secs: f64 = env_or("BENCH_SECS", 8.0);
    let rounds: usize = env_or("BENCH_ROUNDS", 3).max(1);
    let concurrency: usize = env_or("BENCH_FLOOD_CONCURRENCY", 32);
    let trickle: u32 = env_or("BENCH_TRICKLE", 20);
    let share: f64 = env_or("BENCH_LIMIT_SHARE", 0.5);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let setup = Setup::new().await;
    let (indexer, indexer_port) = setup.indexer();

    let off = [
        ("API_TENANT_RATE", "0".to_owned()),
        ("API_TENANT_CONCURRENCY", "0".to_owned()),
    ];
    let (server, base) = setup.api_server(&http, &off).await;
    capacity(&http, &base, 4, 1.0).await; // warm-up
    let capacity = capacity(&http, &base, concurrency, secs).await;
    stop(server);
    let limit = ((capacity * share).round() as u32).max(1);
    println!(
        "API capacity {capacity:.0} creates/s at concurrency {concurrency}; every tenant limited to {limit}/s (burst {limit}), B trickles {trickle}/s; index refresh interval 1 s"
    );
    let limits = [
        ("API_TENANT_RATE", limit.to_string()),
        ("API_TENANT_BURST", limit.to_string()),
        ("API_TENANT_CONCURRENCY", "0".to_owned()),
    ];
    let (server, base) = setup.api_server(&http, &limits).await;
    let offered = f64::from(limit) * 1.2;
    let (mut quiet, mut at_limit, mut hammer) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=rounds {
        let q = phase(&http, &base, indexer_port, secs, trickle, Flood::None).await;
        print_phase(round, "quiet", &q);
        let l = phase(
            &http,
            &base,
            indexer_port,
            secs,
            trickle,
            Flood::Offered(offered),
        )
        .await;
        print_phase(round, "limit", &l);
        let h = phase(
            &http,
            &base,
            indexer_port,
            secs,
            trickle,
            Flood::Hammer(concurrency),
        )
        .await;
        print_phase(round, "hammer", &h);
        quiet.push(q);
        at_limit.push(l);
        hammer.push(h);
    }
    stop(server);
    stop(indexer);

    let med = |ps: &[Phase], f: fn(&Phase) -> f64| median(ps.iter().map(f).collect());
    let ratio = |ps: &[Phase]| median(quiet.iter().zip(ps).map(|(q, p)| p.p99 / q.p99).collect());
    println!();
    println!(
        "API capacity (limits off)    {capacity:.0} creates/s; limit per tenant {limit}/s ({share} of it)"
    );
    for (what, ps) in [
        ("quiet", &quiet),
        (&*format!("A offered {offered:.0}/s") as &str, &at_limit),
        (&*format!("A hammering ×{concurrency}"), &hammer),
    ] {
        println!(
            "B freshness, {what:<20} p50 {:.3} s, p99 {:.3} s, max {:.3} s; B p99 / quiet {:.2}; A {:.0} accepted/s, {:.0} refused/s (medians of {rounds}, ratio of per-round)",
            med(ps, |p| p.p50),
            med(ps, |p| p.p99),
            med(ps, |p| p.max),
            ratio(ps),
            med(ps, |p| p.a_ok_rate),
            med(ps, |p| p.a_refused_rate),
        );
    }
    let all = || quiet.iter().chain(&at_limit).chain(&hammer);
    println!(
        "B refused                    {} of {} (all phases)",
        all().map(|p| p.b_refused).sum::<usize>(),
        all().map(|p| p.b_sent).sum::<usize>()
    );
}

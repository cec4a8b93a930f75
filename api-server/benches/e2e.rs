//! End-to-end freshness through the whole pipeline on the rig: the time from the API's 201 to
//! the message being returned by `/v1/search`, at a steady rate and at the highest rate the
//! pipeline sustains.
//!
//! 1. The api-server (release, tenant limits off) and the indexer (release, from the same target
//!    directory; `make bench-e2e` builds it) on a fresh database, topic and index (refresh
//!    interval 1 s, as the operator installs it).
//! 2. Steady: BENCH_ROUNDS (3) phases of BENCH_SECS (10) at BENCH_RATE (1,000) creates a second,
//!    open loop: tenant A sends the rate less B's share, tenant B sends BENCH_TRICKLE (20) a
//!    second in a conversation a watcher polls every 20 ms with B's `/v1/search`; each of B's
//!    creates is timed from its 201 to the first search that returns it (the freshness harness,
//!    `freshness/mod.rs`, as in `bench-fairness`). Medians of the phases' p50, p99 and max, with
//!    the indexer's own freshness p99 (event → engine acknowledgement, every message).
//! 3. Ramp: one phase per rate from BENCH_RATE up by 25 % until one fails. A rate is sustained
//!    when the API accepted at least 97 % of what was offered, every one of B's messages was
//!    found, and B's p99 stayed under the refresh interval + 0.5 s. Prints the highest.
//!
//! Run with `make bench-e2e` while the rig is up.

mod freshness;

use std::time::Duration;

use freshness::{Flood, Phase, Setup, env_or, median, phase, stop};

fn print_phase(label: &str, p: &Phase) {
    println!(
        "  {label:<14}: freshness p50 {:.3} s  p99 {:.3} s  max {:.3} s  (probes {}, refused {}, unseen {})  load accepted {:>6.0}/s; search p99 {:.3} s; indexer freshness p99 ≤ {:.3} s",
        p.p50,
        p.p99,
        p.max,
        p.b_sent,
        p.b_refused,
        p.b_unseen,
        p.a_ok_rate,
        p.search_p99,
        p.indexer_p99
    );
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` asks for the list of tests; there are none.
    }
    let secs: f64 = env_or("BENCH_SECS", 10.0);
    let rounds: usize = env_or("BENCH_ROUNDS", 3).max(1);
    let rate: f64 = env_or("BENCH_RATE", 1000.0);
    let max_rate: f64 = env_or("BENCH_MAX_RATE", 20_000.0);
    let trickle: u32 = env_or("BENCH_TRICKLE", 20);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let setup = Setup::new().await;
    let refresh = setup.refresh_secs;
    let bound = refresh + 0.5;
    let (indexer, indexer_port) = setup.indexer();
    let off = [
        ("API_TENANT_RATE", "0".to_owned()),
        ("API_TENANT_CONCURRENCY", "0".to_owned()),
    ];
    let (server, base) = setup.api_server(&http, &off).await;
    let load = |total: f64| Flood::Offered((total - f64::from(trickle)).max(1.0));
    // Warm-up: connections, FerretDB's tables, the engine's first segments.
    phase(&http, &base, indexer_port, 2.0, trickle, load(200.0)).await;

    println!(
        "end-to-end freshness (201 → returned by /v1/search), index refresh interval {refresh} s, {secs} s per phase, {trickle} probes/s"
    );
    let mut steady = Vec::new();
    for round in 1..=rounds {
        let p = phase(&http, &base, indexer_port, secs, trickle, load(rate)).await;
        print_phase(&format!("{rate:.0}/s round {round}"), &p);
        steady.push(p);
    }

    let sustained = |p: &Phase, offered: f64| {
        p.a_ok_rate >= 0.97 * (offered - f64::from(trickle))
            && p.b_unseen == 0
            && p.b_refused == 0
            && p.p99 < bound
    };
    let mut best: Option<(f64, Phase)> = None;
    let mut offered = rate;
    let failed = loop {
        let p = phase(&http, &base, indexer_port, secs, trickle, load(offered)).await;
        print_phase(&format!("ramp {offered:.0}/s"), &p);
        if !sustained(&p, offered) {
            break Some((offered, p));
        }
        best = Some((offered, p));
        offered = (offered * 1.25).round();
        if offered > max_rate {
            break None;
        }
    };
    stop(server);
    stop(indexer);

    let med = |f: fn(&Phase) -> f64| median(steady.iter().map(f).collect());
    println!();
    println!(
        "at {rate:.0} creates/s         freshness p50 {:.3} s, p99 {:.3} s, max {:.3} s (medians of {rounds}; refresh interval {refresh} s); indexer freshness p99 ≤ {:.3} s",
        med(|p| p.p50),
        med(|p| p.p99),
        med(|p| p.max),
        med(|p| p.indexer_p99),
    );
    match &best {
        Some((r, p)) => println!(
            "highest sustained rate   {r:.0} creates/s (accepted {:.0}/s + probes; freshness p99 {:.3} s < {bound} s, max {:.3} s)",
            p.a_ok_rate, p.p99, p.max
        ),
        None => println!("highest sustained rate   none: {rate:.0}/s already failed"),
    }
    if let Some((r, p)) = failed {
        println!(
            "first rate not sustained {r:.0} creates/s (accepted {:.0}/s of {:.0}, freshness p99 {:.3} s, unseen {}, refused {})",
            p.a_ok_rate,
            r - f64::from(trickle),
            p.p99,
            p.b_unseen,
            p.b_refused
        );
    }
}

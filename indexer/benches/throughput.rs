//! Indexer throughput against the raw `_bulk` ceiling, measured in the same run on the rig.
//!
//! 1. Preloads BENCH_EVENTS (default 200,000) events into a fresh topic.
//! 2. Ceiling: the same documents sent by this program with plain `_bulk` requests and the same
//!    external versions, at the best batch size × concurrency it finds on a sample.
//! 3. The indexer binary (release) from the earliest offset until it has consumed and settled
//!    every event: throughput, and its peak RSS (VmHWM).
//! 4. Freshness at a steady offered rate (BENCH_RATE events/s for BENCH_STEADY_SECS), from the
//!    indexer's own histogram (event `timestamp` header → engine acknowledgement).
//!
//! Run with `make bench` (= `cargo bench -p indexer --bench throughput`) while the rig is up.
//! BENCH_ROUNDS (default 3) sets the number of ceiling/indexer rounds. BENCH_BASELINE_BIN, the
//! path of another indexer binary (e.g. a build of an earlier commit), runs it too in every
//! round, just before this build's, so two versions are compared under the same load. Unless
//! BENCH_TRACING=0, every round also runs this build exporting every span (100 % sampling) to the
//! rig's collector, just before the untraced run, and reports traced / untraced.

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use e2e::prometheus::{histogram_quantile, scrape};
use e2e::{rig::rig, unique};
use pipeline_contract::kafka::record_key;
use pipeline_contract::search::{IndexLayout, SearchDocument};
use pipeline_contract::{MessageEvent, Timestamp};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use uuid::Uuid;

mod changes;
mod support;
use changes::{Mix, events, headers, produce_all};
use support::{drop_layout, env_or, fresh_layout, median, raw_bulk};

/// `total` events: creates of fresh messages, and every fourth an update of an earlier one.
/// The indexer's freshness quantile between two scrapes.
fn quantile(before: &HashMap<String, f64>, after: &HashMap<String, f64>, q: f64) -> f64 {
    histogram_quantile(before, after, "indexer_freshness_seconds", q)
}

#[tokio::main]
async fn main() {
    let total: usize = env_or("BENCH_EVENTS", 200_000);
    let rate: usize = env_or("BENCH_RATE", 1_000);
    let steady_secs: u64 = env_or("BENCH_STEADY_SECS", 20);
    let http = reqwest::Client::new();

    let topic = unique("bench-events");
    let dlq = format!("{topic}.dlq");
    e2e::kafka::create_topics(&[(&topic, 3), (&dlq, 3)]).await;
    let conversations: Vec<Uuid> = (0..500).map(|_| Uuid::new_v4()).collect();
    let events = events(total, &conversations, Mix::CreatesAndEdits);
    let producer: FutureProducer = e2e::kafka::producer_config()
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .create()
        .unwrap();
    let t = Instant::now();
    produce_all(&producer, &topic, &events).await;
    println!(
        "preloaded {total} events into {topic} in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    // Ceiling: the best batch size × concurrency on a sample, then all documents with it.
    let docs: Vec<SearchDocument> = events
        .iter()
        .map(|e| SearchDocument::from_event(e).unwrap())
        .collect();
    let sample = &docs[..docs.len().min(30_000)];
    let mut best = (0.0, 0, 0);
    for batch in [500, 1000, 2000] {
        for concurrency in [1, 2, 4] {
            let layout = fresh_layout(&http, "bench-ceiling").await;
            let rate = raw_bulk(&http, &layout, sample, batch, concurrency).await;
            drop_layout(&http, &layout).await;
            println!(
                "  ceiling trial: batch {batch:>4} × {concurrency} concurrent: {rate:>8.0} docs/s"
            );
            if rate > best.0 {
                best = (rate, batch, concurrency);
            }
        }
    }
    // Rounds of (ceiling, indexer) on fresh indices, alternated so drift in the engine's speed
    // hits both alike; the ratio reported is the median of the per-round ratios (each round's
    // indexer against the ceiling measured just before it). The last indexer stays up for the
    // freshness phase.
    let rounds: usize = env_or("BENCH_ROUNDS", 3).max(1);
    let baseline_bin = std::env::var("BENCH_BASELINE_BIN").ok();
    let (mut ceilings, mut throughputs, mut after_starts, mut startups, mut peak_rss) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), 0u64);
    let (mut ratios, mut after_start_ratios) = (Vec::new(), Vec::new());
    let (mut baselines, mut baseline_ratios, mut baseline_rss) = (Vec::new(), Vec::new(), 0u64);
    let mut last = None;
    // BENCH_TRACING=0 leaves the traced runs out.
    let tracing = env_or("BENCH_TRACING", 1) != 0;
    let collector = if tracing {
        rig().otel_collector_url().to_owned()
    } else {
        String::new()
    };
    let (mut traced, mut traced_ratios, mut traced_rss) = (Vec::new(), Vec::new(), 0u64);
    for round in 0..rounds {
        let layout = fresh_layout(&http, "bench-ceiling").await;
        ceilings.push(raw_bulk(&http, &layout, &docs, best.1, best.2).await);
        drop_layout(&http, &layout).await;
        if let Some(bin) = &baseline_bin {
            let mut run = run_indexer(&http, bin, &topic, total, &[]).await;
            println!(
                "  round {}: baseline {:>8.0} events/s",
                round + 1,
                run.throughput
            );
            baselines.push(run.throughput);
            baseline_ratios.push(run.throughput / ceilings[round]);
            baseline_rss = baseline_rss.max(run.stop());
            drop_layout(&http, &run.layout).await;
        }
        if tracing {
            // The same binary exporting every span (a consume span per record, a bulk span per
            // request linked to them) to the rig's collector, with a queue that drops none.
            let traced_env = [
                ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.as_str()),
                ("OTEL_TRACES_SAMPLER", "always_on"),
                ("OTEL_BSP_MAX_QUEUE_SIZE", "262144"),
                ("OTEL_BSP_SCHEDULE_DELAY", "1000"),
            ];
            let mut run = run_indexer(
                &http,
                env!("CARGO_BIN_EXE_indexer"),
                &topic,
                total,
                &traced_env,
            )
            .await;
            println!(
                "  round {}: traced  {:>8.0} events/s",
                round + 1,
                run.throughput
            );
            traced.push(run.throughput);
            traced_rss = traced_rss.max(run.stop());
            drop_layout(&http, &run.layout).await;
        }
        let mut run = run_indexer(&http, env!("CARGO_BIN_EXE_indexer"), &topic, total, &[]).await;
        if let Some(t) = traced.last() {
            traced_ratios.push(t / run.throughput);
        }
        println!(
            "  round {}: ceiling {:>8.0} docs/s, indexer {:>8.0} events/s, ratio {:.2}",
            round + 1,
            ceilings[round],
            run.throughput,
            run.throughput / ceilings[round]
        );
        ratios.push(run.throughput / ceilings[round]);
        after_start_ratios.push(run.after_start / ceilings[round]);
        throughputs.push(run.throughput);
        after_starts.push(run.after_start);
        startups.push(run.startup.as_secs_f64());
        if round + 1 == rounds {
            last = Some(run);
        } else {
            peak_rss = peak_rss.max(run.stop());
            drop_layout(&http, &run.layout).await;
        }
    }
    let mut run = last.expect("at least one round");
    let port = run.port;
    let (ceiling, throughput, after_start, startup) = (
        median(&mut ceilings),
        median(&mut throughputs),
        median(&mut after_starts),
        median(&mut startups),
    );
    let (ratio, after_start_ratio) = (median(&mut ratios), median(&mut after_start_ratios));

    // Freshness at a steady offered rate.
    let before = scrape(&http, port).await.unwrap();
    let steady = events_at(rate, steady_secs, &conversations);
    let tick = Duration::from_secs(1) / rate as u32;
    let t0 = Instant::now();
    for (i, e) in steady.iter().enumerate() {
        let due = t0 + tick * i as u32;
        tokio::time::sleep_until(due.into()).await;
        let (key, value) = (record_key(e).unwrap(), e.encode());
        let _ = producer.send_result(
            FutureRecord::to(&topic)
                .key(&key)
                .payload(&value)
                .headers(headers(e, Timestamp::now())),
        );
    }
    let _ = producer.flush(Duration::from_secs(30));
    let want = total as f64 + steady.len() as f64;
    let deadline = Instant::now() + Duration::from_secs(120);
    let after = loop {
        let m = scrape(&http, port).await.unwrap();
        if settled(&m) >= want || Instant::now() > deadline {
            break m;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (p50, p99) = (
        quantile(&before, &after, 0.5),
        quantile(&before, &after, 0.99),
    );
    let peak_rss = peak_rss.max(run.stop());
    drop_layout(&http, &run.layout).await;

    println!();
    println!("events                       {total}");
    println!(
        "ceiling (_bulk, batch {} × {}) {ceiling:>10.0} docs/s (median of {rounds})",
        best.1, best.2
    );
    println!("indexer (earliest → settled) {throughput:>10.0} events/s (median of {rounds})");
    println!(
        "ratio indexer / ceiling      {ratio:>10.2}   (median of per-round ratios; target ≥ 0.95)"
    );
    println!(
        "  start-up (spawn → 1st record) {startup:>8.2} s; after it {after_start:.0} events/s, ratio {after_start_ratio:.2}"
    );
    println!(
        "freshness at {rate}/s         p50 ≤ {p50:.3} s, p99 ≤ {p99:.3} s (histogram bucket bounds)"
    );
    println!(
        "indexer peak RSS (VmHWM)     {:>10.1} MiB (target < 64 MiB)",
        peak_rss as f64 / 1024.0
    );
    if !traced.is_empty() {
        println!(
            "traced (100 % of spans)      {:>10.0} events/s (median of {rounds}), traced / untraced {:.2} (median of per-round ratios), peak RSS {:.1} MiB",
            median(&mut traced),
            median(&mut traced_ratios),
            traced_rss as f64 / 1024.0
        );
    }
    if !baselines.is_empty() {
        let baseline = median(&mut baselines);
        println!(
            "baseline (BENCH_BASELINE_BIN) {baseline:>9.0} events/s (median of {rounds}), ratio {:.2}, peak RSS {:.1} MiB",
            median(&mut baseline_ratios),
            baseline_rss as f64 / 1024.0
        );
    }
}

fn settled(m: &HashMap<String, f64>) -> f64 {
    ["indexer_indexed_total", "indexer_already_newer_total"]
        .iter()
        .map(|k| m.get(*k).copied().unwrap_or(0.0))
        .sum()
}

/// A running indexer process that has caught up with the topic.
struct IndexerRun {
    child: std::process::Child,
    layout: IndexLayout,
    port: u16,
    throughput: f64,
    after_start: f64,
    startup: Duration,
}

impl IndexerRun {
    /// Stops the process (SIGTERM) and returns its peak RSS in KiB.
    fn stop(&mut self) -> u64 {
        let peak = e2e::memory::peak_rss_kib(self.child.id()).unwrap_or(0);
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
        peak
    }
}

/// Starts the indexer binary `bin` on a fresh index and group and waits until it has settled
/// `total` events: from the earliest offset to caught up, start-up included.
async fn run_indexer(
    http: &reqwest::Client,
    bin: &str,
    topic: &str,
    total: usize,
    env: &[(&str, &str)],
) -> IndexerRun {
    let layout = fresh_layout(http, "bench-indexer").await;
    let port = e2e::free_port();
    let started = Instant::now();
    let child = Command::new(bin)
        .arg("run")
        .env("KAFKA_BOOTSTRAP_SERVERS", rig().kafka())
        .env("KAFKA_TOPIC", topic)
        .env("KAFKA_CONSUMER_GROUP", unique("bench-group"))
        .env("ELASTICSEARCH_URL", rig().search_url())
        .env("ELASTICSEARCH_ALIAS", layout.alias())
        .env("HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .spawn()
        .expect("start the indexer");
    let mut first_record: Option<Duration> = None;
    loop {
        let metrics = scrape(http, port).await;
        if first_record.is_none()
            && metrics
                .as_ref()
                .is_some_and(|m| m.get("indexer_consumed_total").copied().unwrap_or(0.0) > 0.0)
        {
            first_record = Some(started.elapsed());
        }
        if metrics.is_some_and(|m| settled(&m) >= total as f64) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(1800),
            "the indexer did not catch up in 30 minutes"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let elapsed = started.elapsed();
    let startup = first_record.unwrap_or_default();
    IndexerRun {
        child,
        layout,
        port,
        throughput: total as f64 / elapsed.as_secs_f64(),
        after_start: total as f64 / (elapsed - startup).as_secs_f64(),
        startup,
    }
}

/// `rate × secs` creates of fresh messages for the steady phase.
fn events_at(rate: usize, secs: u64, conversations: &[Uuid]) -> Vec<MessageEvent> {
    events(rate * secs as usize, conversations, Mix::CreatesAndEdits)
        .into_iter()
        .filter(|e| matches!(e, MessageEvent::Created(_)))
        .collect()
}

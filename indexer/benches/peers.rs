//! The indexer beside a real peer on the rig: Benthos v4 (its `kafka_franz` input, a Bloblang
//! mapping and its `opensearch` output; indexer/benches/peer/benthos.yaml), consuming the same
//! changes from the same topic into the same engine and index layout.
//!
//! 1. Preloads BENCH_EVENTS (default 200,000) changes into a fresh topic: creates, edits of
//!    earlier messages (every 4th) and deletes (every 10th), each message's versions in order.
//! 2. Rounds: the raw `_bulk` ceiling of the same documents (as in `make bench`), then the indexer
//!    and Benthos, their order alternating from round to round, each on a fresh index and
//!    consumer group. Per run: events/s from spawn until every change is written (start-up
//!    included for both), peak RSS (VmHWM) and CPU seconds of the process.
//! 3. After each run the index is compared with the changes' final state: documents left at an
//!    older version, live messages missing, deleted messages still searchable.
//! 4. After the last round each replays the first half of the changes (a copy in another topic:
//!    what a redelivery brings, from the relay's at-least-once publish or a consumer restarting
//!    from an older offset) into the index it has just written, and the index is compared again.
//!
//! Run with `make bench-peers` (= `cargo bench -p indexer --bench peers`) while the rig is up;
//! `devstack/up` builds Benthos. BENCH_ROUNDS (default 3). Benthos's settings, whose defaults are
//! the best of a sweep on this rig: BENTHOS_BATCH, BENTHOS_MAX_IN_FLIGHT, BENTHOS_CHECKPOINT_LIMIT,
//! BENTHOS_THREADS. Benthos writes a delete as the same tombstone the indexer writes (see the
//! configuration for why), so both send the engine the same documents.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use e2e::prometheus::scrape;
use e2e::state::{Versions, newest};
use e2e::{rig::rig, unique};
use pipeline_contract::search::{IndexLayout, SearchDocument};
use rdkafka::producer::FutureProducer;
use uuid::Uuid;

mod changes;
mod support;
use changes::{Mix, events, produce_all};
use support::{drop_layout, env_or, fresh_layout, median, raw_bulk};

const BENTHOS_CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/peer/benthos.yaml");

#[derive(Clone, Copy, PartialEq, Eq)]
enum Sink {
    Indexer,
    Benthos,
}

impl Sink {
    fn name(self) -> &'static str {
        match self {
            Self::Indexer => "indexer",
            Self::Benthos => "benthos",
        }
    }

    fn spawn(self, topic: &str, layout: &IndexLayout, port: u16) -> Child {
        let group = unique("bench-peers-group");
        let mut command = match self {
            Self::Indexer => {
                let mut c = Command::new(env!("CARGO_BIN_EXE_indexer"));
                c.arg("run")
                    .env("KAFKA_TOPIC", topic)
                    .env("KAFKA_CONSUMER_GROUP", &group)
                    .env("ELASTICSEARCH_ALIAS", layout.alias())
                    .env("HTTP_ADDR", format!("127.0.0.1:{port}"))
                    .env("RUST_LOG", "warn");
                c
            }
            Self::Benthos => {
                let mut c = rig().benthos();
                c.arg("-c")
                    .arg(BENTHOS_CONFIG)
                    .env("KAFKA_TOPIC", topic)
                    .env("KAFKA_CONSUMER_GROUP", &group)
                    .env("ELASTICSEARCH_ALIAS", layout.alias())
                    .env("BENTHOS_HTTP_ADDRESS", format!("127.0.0.1:{port}"));
                c
            }
        };
        command
            .env("KAFKA_BOOTSTRAP_SERVERS", rig().kafka())
            .env("ELASTICSEARCH_URL", rig().search_url())
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", self.name()))
    }

    /// How many changes the process has written so far, by its own metrics.
    fn written(self, metrics: &HashMap<String, f64>) -> f64 {
        let counted = |prefix: &str| {
            metrics
                .iter()
                .filter(|(k, _)| k.starts_with(prefix))
                .map(|(_, v)| v)
                .sum::<f64>()
        };
        match self {
            // Written, or found already newer in the index (a replay).
            Self::Indexer => {
                counted("indexer_indexed_total") + counted("indexer_already_newer_total")
            }
            Self::Benthos => counted("output_sent"),
        }
    }
}

/// One process's pass over a topic.
struct Pass {
    /// Changes written, and the seconds from spawn until the last of them (or until progress
    /// stopped, when not all were).
    written: f64,
    secs: f64,
    rss_mib: f64,
    cpu_secs: f64,
}

/// Runs `sink` over `topic` into `layout` until it has written `total` changes, or until it has
/// written nothing more for `stall` (a change it retries forever); stops it.
async fn pass(
    http: &reqwest::Client,
    sink: Sink,
    topic: &str,
    layout: &IndexLayout,
    total: usize,
    stall: Duration,
) -> Pass {
    let port = e2e::free_port();
    let started = Instant::now();
    let mut child = sink.spawn(topic, layout, port);
    // `progress_at`: when `written` last grew.
    let (mut written, mut progress_at) = (0.0, started);
    loop {
        if let Some(m) = scrape(http, port).await {
            let now = sink.written(&m);
            if now > written {
                (written, progress_at) = (now, Instant::now());
            }
            if written >= total as f64 {
                break;
            }
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("{} exited early: {status}", sink.name());
        }
        if written > 0.0 && progress_at.elapsed() > stall {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(1800),
            "{} did not finish in 30 minutes",
            sink.name()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rss_mib = e2e::memory::peak_rss_mib(child.id());
    let cpu_secs = e2e::memory::cpu_seconds(child.id()).unwrap_or(f64::NAN);
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let _ = child.wait();
    Pass {
        written,
        secs: progress_at.duration_since(started).as_secs_f64(),
        rss_mib,
        cpu_secs,
    }
}

/// How an index differs from the changes' final state.
#[derive(Default, Clone, Copy)]
struct Check {
    /// Live messages whose document is at an older version.
    stale: usize,
    /// Live messages with no searchable document.
    missing: usize,
    /// Deleted messages whose document is searchable again.
    resurrected: usize,
}

impl Check {
    fn wrong(&self) -> usize {
        self.stale + self.missing + self.resurrected
    }
}

impl std::fmt::Display for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "stale {}, missing {}, resurrected {}",
            self.stale, self.missing, self.resurrected
        )
    }
}

/// Reads every document of `layout` (version and `deleted`; a delete either removed the
/// document or left a tombstone) and compares them with `expected`.
async fn check(http: &reqwest::Client, layout: &IndexLayout, expected: &Versions) -> Check {
    let base = rig().search_url();
    let alias = layout.alias();
    http.post(format!("{base}/{alias}/_refresh"))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();
    let mut found = Versions::with_capacity(expected.len());
    let first = http
        .post(format!("{base}/{alias}/_search?scroll=1m"))
        .json(&serde_json::json!({
            "size": 10_000, "sort": ["_doc"], "_source": ["version", "deleted"]
        }));
    let mut page: serde_json::Value = first.send().await.unwrap().json().await.unwrap();
    loop {
        let hits = page["hits"]["hits"]
            .as_array()
            .unwrap_or_else(|| panic!("not a search answer: {page}"));
        if hits.is_empty() {
            break;
        }
        for h in hits {
            let id: Uuid = h["_id"].as_str().unwrap().parse().unwrap();
            let version = h["_source"]["version"].as_u64().unwrap();
            let deleted = h["_source"]["deleted"].as_bool().unwrap_or(false);
            found.insert(id, (version, deleted));
        }
        let scroll_id = page["_scroll_id"].clone();
        page = http
            .post(format!("{base}/_search/scroll"))
            .json(&serde_json::json!({"scroll": "1m", "scroll_id": scroll_id}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    }
    let _ = http
        .delete(format!("{base}/_search/scroll"))
        .json(&serde_json::json!({"scroll_id": page["_scroll_id"]}))
        .send()
        .await;
    let mut c = Check::default();
    for (id, &(version, deleted)) in expected {
        match (found.get(id), deleted) {
            (Some(&(_, false)), true) => c.resurrected += 1,
            (None | Some(&(_, true)), false) => c.missing += 1,
            (Some(&(v, false)), false) if v < version => c.stale += 1,
            _ => {}
        }
    }
    c
}

/// One sink's figures over the rounds.
#[derive(Default)]
struct Tally {
    rates: Vec<f64>,
    /// Each round's rate over that round's ceiling.
    of_ceiling: Vec<f64>,
    cpu: Vec<f64>,
    rss_mib: f64,
    /// The worst round's check after one pass.
    worst: Check,
    /// The last round's replay: written of offered, and the check after it.
    replay: Option<(f64, Check)>,
}

#[tokio::main]
async fn main() {
    let total: usize = env_or("BENCH_EVENTS", 200_000);
    let rounds: usize = env_or("BENCH_ROUNDS", 3).max(1);
    let batch: usize = env_or("BENCH_CEILING_BATCH", 1000);
    let concurrency: usize = env_or("BENCH_CEILING_CONCURRENCY", 4);
    // A pass that writes nothing more for this long has stopped on a change it cannot write.
    let stall = Duration::from_secs(env_or("BENCH_STALL_SECS", 10));
    let http = reqwest::Client::new();

    let topic = unique("bench-peers");
    let replay = format!("{topic}-replay");
    let (dlq, replay_dlq) = (format!("{topic}.dlq"), format!("{replay}.dlq"));
    e2e::kafka::create_topics(&[(&topic, 3), (&dlq, 3), (&replay, 3), (&replay_dlq, 3)]).await;
    let conversations: Vec<Uuid> = (0..500).map(|_| Uuid::new_v4()).collect();
    let events = events(total, &conversations, Mix::WithDeletes);
    let expected = newest(&events);
    let half = total / 2;
    let producer: FutureProducer = e2e::kafka::producer_config()
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .create()
        .unwrap();
    produce_all(&producer, &topic, &events).await;
    produce_all(&producer, &replay, &events[..half]).await;
    let count = |t: &str| {
        events
            .iter()
            .filter(|e| e.event_type().as_str() == t)
            .count()
    };
    let deleted = expected.values().filter(|(_, d)| *d).count();
    println!(
        "preloaded {total} changes into {topic} ({} creates, {} edits, {} deletes; {} messages end live, {deleted} deleted), and the first {half} again into {replay}",
        count("message.created"),
        count("message.updated"),
        count("message.deleted"),
        expected.len() - deleted,
    );

    let docs: Vec<SearchDocument> = events
        .iter()
        .map(|e| SearchDocument::from_event(e).unwrap())
        .collect();
    let (mut ceilings, mut ratios) = (Vec::new(), Vec::new());
    let mut tallies: HashMap<&'static str, Tally> = HashMap::new();
    for round in 0..rounds {
        let layout = fresh_layout(&http, "bench-peers-ceiling").await;
        ceilings.push(raw_bulk(&http, &layout, &docs, batch, concurrency).await);
        drop_layout(&http, &layout).await;
        let order = if round % 2 == 0 {
            [Sink::Indexer, Sink::Benthos]
        } else {
            [Sink::Benthos, Sink::Indexer]
        };
        let mut rates = HashMap::new();
        for sink in order {
            let layout = fresh_layout(&http, &format!("bench-peers-{}", sink.name())).await;
            let p = pass(&http, sink, &topic, &layout, total, stall).await;
            let c = check(&http, &layout, &expected).await;
            let rate = p.written / p.secs;
            println!(
                "  round {}: {:<7} {rate:>8.0} events/s ({:.0} of {total} written in {:.1} s), peak RSS {:>6.1} MiB, CPU {:>5.1} s; index: {c}",
                round + 1,
                sink.name(),
                p.written,
                p.secs,
                p.rss_mib,
                p.cpu_secs,
            );
            let t = tallies.entry(sink.name()).or_default();
            t.rates.push(rate);
            t.of_ceiling.push(rate / ceilings[round]);
            t.cpu.push(p.cpu_secs);
            t.rss_mib = t.rss_mib.max(p.rss_mib);
            if c.wrong() > t.worst.wrong() {
                t.worst = c;
            }
            if round + 1 == rounds {
                let r = pass(&http, sink, &replay, &layout, half, stall).await;
                let c = check(&http, &layout, &expected).await;
                println!(
                    "  replay:  {:<7} wrote {:.0} of {half} in {:.1} s; index: {c}",
                    sink.name(),
                    r.written,
                    r.secs
                );
                t.replay = Some((r.written, c));
            }
            rates.insert(sink.name(), rate);
            drop_layout(&http, &layout).await;
        }
        println!(
            "  round {}: ceiling {:>8.0} docs/s (_bulk, batch {batch} × {concurrency}); benthos / indexer {:.2}",
            round + 1,
            ceilings[round],
            rates["benthos"] / rates["indexer"]
        );
        ratios.push(rates["benthos"] / rates["indexer"]);
    }

    println!();
    println!("changes                      {total} (median of {rounds} rounds)");
    println!(
        "ceiling (_bulk)              {:>10.0} docs/s",
        median(&mut ceilings)
    );
    for name in ["indexer", "benthos"] {
        let t = tallies.get_mut(name).unwrap();
        let (rate, cpu) = (median(&mut t.rates), median(&mut t.cpu));
        println!(
            "{name:<8} {rate:>10.0} events/s ({:.2} of the ceiling), peak RSS {:>6.1} MiB, CPU {cpu:>5.1} s ({:.0} µs a change)",
            median(&mut t.of_ceiling),
            t.rss_mib,
            cpu * 1e6 / total as f64
        );
        println!("           after one pass (worst round): {}", t.worst);
        if let Some((written, c)) = t.replay {
            println!("           after replaying {half}: wrote {written:.0}; {c}");
        }
    }
    println!(
        "benthos / indexer            {:>10.2}   (median of per-round ratios)",
        median(&mut ratios)
    );
}

//! api-server create rate against the raw MongoDB insert ceiling, measured in the same run on the
//! rig, with the same documents, the same concurrency and the same server.
//!
//! 1. Starts the api-server binary (release) on a fresh database and topic.
//! 2. Sweep: closed-loop `POST /v1/messages` at concurrency 1, 2, 4, ... BENCH_MAX_CONCURRENCY
//!    (default 32) for BENCH_SECS (default 5) each; the best level is the highest rate with p99
//!    under 20 ms.
//! 3. At that concurrency, BENCH_ROUNDS (default 3) alternating rounds of the API, of a second
//!    api-server exporting every request's trace (100 % sampling) to the rig's collector, and of
//!    the raw ceiling: this program inserting the very documents the API writes with the
//!    `mongodb` crate (`insert_one`, one per request) into a collection with the same indexes;
//!    then the new ceiling, the same documents in unordered `insert_many`s of the mean size the
//!    API's group commit used in that round (its `api_mongodb_insert_batch_size` histogram),
//!    BENCH_RAW_MANY_IN_FLIGHT (default 1, the API's default) at once. Prints medians and the
//!    medians of per-round ratios (API / raw `insert_one`, API / raw `insert_many`, traced /
//!    untraced). Tenant limits are off in both servers: this measures the server.
//! 4. The api-server's peak RSS (VmHWM), and how long the relay took to put the last change on
//!    Kafka after the load stopped.
//!
//! The server runs with BENCH_SERVER_WORKERS async workers (default 1: on the rig's 2 cores it
//! shares the machine with FerretDB, PostgreSQL, Kafka and this load generator, and one worker
//! serves ~8% more than two; a pod with a 1-CPU limit gets one by default anyway).
//! BENCH_SERVER_ENV="K=V,..." passes extra env vars to the server (experiments);
//! BENCH_SERVER_BIN runs another api-server binary (an older build, for before/after figures).
//!
//! Run with `make bench-api` (= `cargo bench -p api-server --bench create`) while the rig is up.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use api_server::store::StoredMessage;
use e2e::{kafka, rig::rig, unique};
use mongodb::bson::DateTime;
use serde_json::json;
use sha2::{Digest, Sha256};
use uuid::Uuid;

const KEY: &str = "bench-key-7c1e";

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One create body: ~180 bytes of content and a small metadata object, like a chat message.
fn body(i: u64, conversations: &[Uuid]) -> serde_json::Value {
    json!({
        "conversationId": conversations[(i as usize) % conversations.len()],
        "senderId": Uuid::new_v4(),
        "content": format!("message {i}: the quarterly planning of team {} moves to Thursday; please bring the figures and the open questions", i % 97),
        "metadata": {"channel": format!("c{}", i % 13), "priority": i % 3},
    })
}

/// The document the API stores for `body` (same fields, same sizes).
fn document(body: &serde_json::Value) -> StoredMessage {
    let now = DateTime::now();
    StoredMessage {
        id: Uuid::new_v4().to_string(),
        tenant_id: "bench".into(),
        conversation_id: body["conversationId"].as_str().unwrap().to_owned(),
        sender_id: Some(body["senderId"].as_str().unwrap().to_owned()),
        content: Some(body["content"].as_str().unwrap().to_owned()),
        metadata_json: Some(body["metadata"].to_string()),
        timestamp: now,
        updated_at: now,
        version: 1,
        deleted: false,
        deleted_at: None,
        fingerprint: None,
        correlation_id: Uuid::new_v4().to_string(),
    }
}

#[derive(Debug, Clone, Copy)]
struct Run {
    rate: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
}

fn summarize(mut latencies: Vec<Duration>, elapsed: Duration, errors: u64) -> Run {
    latencies.sort_unstable();
    let pick = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
    };
    Run {
        rate: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50_ms: pick(0.50),
        p99_ms: pick(0.99),
        errors,
    }
}

/// Runs `concurrency` closed loops of `op` for `secs`; latencies of the successful ones.
async fn closed_loop<F, Fut>(concurrency: usize, secs: f64, op: F) -> Run
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|w| {
            let (op, stop) = (op.clone(), stop.clone());
            tokio::spawn(async move {
                let (mut latencies, mut errors, mut i) = (Vec::new(), 0u64, 0u64);
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    if op(w as u64 * 1_000_000_000 + i).await {
                        latencies.push(t.elapsed());
                    } else {
                        errors += 1;
                    }
                    i += 1;
                }
                (latencies, errors)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut all, mut errors) = (Vec::new(), 0);
    for t in tasks {
        let (l, e) = t.await.unwrap();
        all.extend(l);
        errors += e;
    }
    summarize(all, started.elapsed(), errors)
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` asks for the list of tests; there are none.
    }
    let secs: f64 = env_or("BENCH_SECS", 5.0);
    let rounds: usize = env_or("BENCH_ROUNDS", 3);
    let max_concurrency: usize = env_or("BENCH_MAX_CONCURRENCY", 32);

    let topic = unique("bench-api-events");
    kafka::create_topic(&topic, 3).await;
    let database = unique("bench_api").replace('-', "_");
    let dir = std::env::temp_dir().join(unique("bench-api"));
    std::fs::create_dir_all(&dir).unwrap();
    let keys = dir.join("keys.yaml");
    let digest: String = Sha256::digest(KEY.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    std::fs::write(
        &keys,
        format!("- name: bench\n  tenant: bench\n  sha256: {digest}\n"),
    )
    .unwrap();
    let binary = std::env::var("BENCH_SERVER_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_api-server").to_owned());
    println!("server binary: {binary}");
    let workers: usize = env_or("BENCH_SERVER_WORKERS", 1);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()
        .unwrap();
    let (mut child, base, metrics_url) =
        start_server(&http, &binary, workers, &database, &topic, &keys, None).await;
    // The same server with every request traced (100 %) to the rig's collector, on a database
    // and topic of its own: the cost of tracing, in the same rounds.
    let traced_database = unique("bench_api_traced").replace('-', "_");
    let traced_topic = unique("bench-api-traced-events");
    kafka::create_topic(&traced_topic, 3).await;
    let (mut traced_child, traced_base, traced_metrics) = start_server(
        &http,
        &binary,
        workers,
        &traced_database,
        &traced_topic,
        &keys,
        Some(rig().otel_collector_url()),
    )
    .await;
    let conversations: Arc<Vec<Uuid>> = Arc::new((0..50).map(|_| Uuid::new_v4()).collect());
    let creates = |base: &str| {
        let (http, base, conversations) = (http.clone(), base.to_owned(), conversations.clone());
        move |i: u64| {
            let (http, base, conversations) = (http.clone(), base.clone(), conversations.clone());
            async move {
                http.post(format!("{base}/v1/messages"))
                    .bearer_auth(KEY)
                    .json(&body(i, &conversations))
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == reqwest::StatusCode::CREATED)
            }
        }
    };
    let api = creates(&base);
    let traced = creates(&traced_base);
    let mongo = mongodb::Client::with_uri_str(rig().mongodb_uri())
        .await
        .unwrap();
    // The same collection definition as the API's (its indexes included): the ceiling is the
    // server's cost of these writes, without the API around them.
    let raw_database = unique("bench_raw").replace('-', "_");
    api_server::store::Store::new(&mongo, &raw_database, "messages")
        .ensure_indexes()
        .await
        .unwrap();
    let raw_collection = mongo
        .database(&raw_database)
        .collection::<StoredMessage>("messages");
    let raw = {
        let conversations = conversations.clone();
        move |i: u64| {
            let (collection, conversations) = (raw_collection.clone(), conversations.clone());
            async move {
                collection
                    .insert_one(document(&body(i, &conversations)))
                    .await
                    .is_ok()
            }
        }
    };

    // The new ceiling: the same documents in unordered `insert_many`s of the size the API's
    // group commit was seen to use in the round before, as many in flight as it allows.
    let raw_many_collection = mongo
        .database(&raw_database)
        .collection::<StoredMessage>("messages_many");
    let raw_many = {
        let conversations = conversations.clone();
        move |size: u64| {
            let (collection, conversations) = (raw_many_collection.clone(), conversations.clone());
            move |i: u64| {
                let (collection, conversations) = (collection.clone(), conversations.clone());
                async move {
                    collection
                        .insert_many(
                            (0..size).map(|j| document(&body(i * 1000 + j, &conversations))),
                        )
                        .ordered(false)
                        .await
                        .is_ok()
                }
            }
        }
    };
    let many_in_flight: usize = env_or("BENCH_RAW_MANY_IN_FLIGHT", 1);
    let port = |url: &str| {
        url.trim_end_matches("/metrics")
            .rsplit(':')
            .next()
            .unwrap()
            .parse::<u16>()
            .unwrap()
    };
    let (api_port, traced_port) = (port(&metrics_url), port(&traced_metrics));
    // (batches, documents) the API's group commit wrote so far.
    let batches = |port: u16| {
        let http = http.clone();
        async move {
            let m = e2e::prometheus::scrape(&http, port)
                .await
                .unwrap_or_default();
            let get = |k: &str| m.get(k).copied().unwrap_or(0.0);
            (
                get("api_mongodb_insert_batch_size_count"),
                get("api_mongodb_insert_batch_size_sum"),
            )
        }
    };

    println!(
        "api-server create benchmark: {secs} s per run, MongoDB-wire server {}, api-server with {workers} worker thread(s)",
        rig().mongodb_uri()
    );
    // Warm both paths (connections, FerretDB's tables).
    closed_loop(4, 1.0, api.clone()).await;
    closed_loop(4, 1.0, traced.clone()).await;
    closed_loop(4, 1.0, raw.clone()).await;

    println!("sweep (API): concurrency → rate, p50, p99");
    let mut best: Option<(usize, Run)> = None;
    let mut concurrency = 1;
    while concurrency <= max_concurrency {
        let run = closed_loop(concurrency, secs, api.clone()).await;
        println!(
            "  c={concurrency:>3}: {:>7.0}/s  p50 {:>6.2} ms  p99 {:>6.2} ms  errors {}",
            run.rate, run.p50_ms, run.p99_ms, run.errors
        );
        if run.p99_ms < 20.0 && best.is_none_or(|(_, b)| run.rate > b.rate) {
            best = Some((concurrency, run));
        }
        concurrency *= 2;
    }
    let Some((concurrency, _)) = best else {
        println!("no concurrency kept p99 under 20 ms");
        for c in [&mut child, &mut traced_child] {
            let _ = c.kill();
            let _ = c.wait();
        }
        return;
    };
    println!(
        "rounds at concurrency {concurrency}: API, API with 100 % of requests traced, raw insert_one, raw insert_many ({many_in_flight} in flight) of the API's mean batch"
    );
    let (mut api_rates, mut raw_rates, mut p50s, mut p99s) = (vec![], vec![], vec![], vec![]);
    let (mut ratios, mut traced_ratios, mut traced_p99s) = (vec![], vec![], vec![]);
    let (mut many_ratios, mut batch_sizes, mut traced_batch_sizes) = (vec![], vec![], vec![]);
    for round in 0..rounds {
        let before = batches(api_port).await;
        let a = closed_loop(concurrency, secs, api.clone()).await;
        let after = batches(api_port).await;
        let batch = (after.1 - before.1) / (after.0 - before.0).max(1.0);
        let before = batches(traced_port).await;
        let t = closed_loop(concurrency, secs, traced.clone()).await;
        let after = batches(traced_port).await;
        traced_batch_sizes.push((after.1 - before.1) / (after.0 - before.0).max(1.0));
        let r = closed_loop(concurrency, secs, raw.clone()).await;
        let size = batch.round().max(1.0) as u64;
        let m = closed_loop(many_in_flight, secs, raw_many(size)).await;
        let many_rate = m.rate * size as f64;
        println!(
            "           batch {batch:.1} → raw insert_many of {size}: {many_rate:>7.0} docs/s (p99 {:.2} ms)  API/raw insert_many {:.2}",
            m.p99_ms,
            a.rate / many_rate
        );
        batch_sizes.push(batch);
        many_ratios.push(a.rate / many_rate);
        println!(
            "  round {round}: API {:>7.0}/s (p50 {:.2} ms, p99 {:.2} ms, errors {})  traced {:>7.0}/s (p99 {:.2} ms, errors {})  raw {:>7.0}/s (p50 {:.2} ms, p99 {:.2} ms)  API/raw {:.2}  traced/API {:.2}",
            a.rate,
            a.p50_ms,
            a.p99_ms,
            a.errors,
            t.rate,
            t.p99_ms,
            t.errors,
            r.rate,
            r.p50_ms,
            r.p99_ms,
            a.rate / r.rate,
            t.rate / a.rate,
        );
        api_rates.push(a.rate);
        raw_rates.push(r.rate);
        p50s.push(a.p50_ms);
        p99s.push(a.p99_ms);
        ratios.push(a.rate / r.rate);
        traced_ratios.push(t.rate / a.rate);
        traced_p99s.push(t.p99_ms);
    }
    let (api_rate, raw_rate) = (median(api_rates), median(raw_rates));
    let traced_rss = e2e::memory::peak_rss_mib(traced_child.id());
    let _ = traced_child.kill();
    let _ = traced_child.wait();

    // The relay: how long until the topic holds every create.
    let stop_load = Instant::now();
    let caught_up = loop {
        let text = http
            .get(&metrics_url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let pending = text
            .lines()
            .find_map(|l| l.strip_prefix("api_relay_pending "))
            .and_then(|v| v.trim().parse::<i64>().ok());
        let lag = text
            .lines()
            .find_map(|l| l.strip_prefix("api_relay_lag_seconds "))
            .and_then(|v| v.trim().parse::<f64>().ok());
        if pending == Some(0) && lag == Some(0.0) {
            break stop_load.elapsed();
        }
        if stop_load.elapsed() > Duration::from_secs(120) {
            break Duration::MAX;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let rss = e2e::memory::peak_rss_mib(child.id());
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();

    println!();
    println!("concurrency            {concurrency} (api-server: {workers} worker thread(s))");
    println!("API create rate        {api_rate:.0}/s (median of {rounds})");
    println!("raw insert_one rate    {raw_rate:.0}/s (median of {rounds})");
    println!(
        "ratio API / raw        {:.2} (median of per-round ratios; target ≥ 1.0)",
        median(ratios)
    );
    println!(
        "API / raw insert_many  {:.2} (median of per-round ratios, at the API's mean batch: median {:.1} documents, traced {:.1})",
        median(many_ratios),
        median(batch_sizes),
        median(traced_batch_sizes)
    );
    println!(
        "traced / untraced      {:.2} (median of per-round ratios; p99 traced {:.2} ms, peak RSS {traced_rss:.1} MiB)",
        median(traced_ratios),
        median(traced_p99s)
    );
    println!(
        "API p50 / p99          {:.2} ms / {:.2} ms (medians; p99 target < 20 ms)",
        median(p50s),
        median(p99s)
    );
    println!("api-server peak RSS    {rss:.1} MiB (target < 64)");
    println!(
        "relay drained in       {:.1} s after the load stopped",
        caught_up.as_secs_f64()
    );
}

/// Starts the api-server `binary` on `database` and `topic`, tenant limits off (this measures
/// the server, not a tenant's share of it), exporting every request's trace to `collector`
/// when given; returns it once ready, with its base URL and the URL of its `/metrics`.
async fn start_server(
    http: &reqwest::Client,
    binary: &str,
    workers: usize,
    database: &str,
    topic: &str,
    keys: &std::path::Path,
    collector: Option<&str>,
) -> (std::process::Child, String, String) {
    let (port, metrics_port) = (e2e::free_port(), e2e::free_port());
    let base = format!("http://127.0.0.1:{port}");
    let log: PathBuf = keys.with_file_name(format!("api-server-{port}.log"));
    let mut command = Command::new(binary);
    // Extra settings of the server for experiments: BENCH_SERVER_ENV="K=V,K2=V2".
    for pair in std::env::var("BENCH_SERVER_ENV")
        .unwrap_or_default()
        .split(',')
    {
        if let Some((k, v)) = pair.split_once('=') {
            command.env(k, v);
        }
    }
    if let Some(collector) = collector {
        // A queue that holds a few seconds of spans at this rate, so none is dropped unsent.
        command
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", collector)
            .env("OTEL_TRACES_SAMPLER", "always_on")
            .env("OTEL_BSP_MAX_QUEUE_SIZE", "65536")
            .env("OTEL_BSP_SCHEDULE_DELAY", "1000");
    }
    let child = command
        .env("API_WORKER_THREADS", workers.to_string())
        .env("API_TENANT_RATE", "0")
        .env("API_TENANT_CONCURRENCY", "0")
        .env("RUST_LOG", "warn")
        .env("HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("METRICS_ADDR", format!("127.0.0.1:{metrics_port}"))
        .env("MONGODB_URI", rig().mongodb_uri())
        .env("MONGODB_DATABASE", database)
        .env("KAFKA_BOOTSTRAP_SERVERS", rig().kafka())
        .env("KAFKA_TOPIC", topic)
        .env("API_KEYS_FILE", keys)
        .stdout(Stdio::from(std::fs::File::create(&log).unwrap()))
        .stderr(Stdio::null())
        .spawn()
        .expect("api-server starts");
    let deadline = Instant::now() + Duration::from_secs(30);
    while http
        .get(format!("{base}/ready"))
        .send()
        .await
        .map_or(true, |r| !r.status().is_success())
    {
        assert!(
            Instant::now() < deadline,
            "api-server not ready; log: {}",
            log.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (
        child,
        base,
        format!("http://127.0.0.1:{metrics_port}/metrics"),
    )
}

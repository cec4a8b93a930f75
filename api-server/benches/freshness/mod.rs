//! The freshness harness of the benchmarks that measure it (`fairness`, `e2e`): the api-server
//! and the indexer (release builds) on a fresh database, topic and index of the rig, tenant B
//! writing a trickle whose every create is timed from its 201 until B's own `/v1/search` returns
//! it (a watcher polls B's conversation every 20 ms: the period bounds the error), while tenant A
//! sends load as a [`Flood`] says.
//!
//! Only B's messages are timed: watching every message would make the watcher a load of its own.
//! B's creates go through the same server, topic, indexer and index as A's, so they wait in the
//! same queues and batches.

#![allow(dead_code)] // Each benchmark uses its own part of it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use e2e::prometheus::{histogram_quantile, scrape};
use e2e::{kafka, rig::rig, unique};
use pipeline_contract::install::{SearchEndpoint, install};
use pipeline_contract::search::{IndexLayout, IndexSettings};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use uuid::Uuid;

pub const KEY_A: &str = "bench-noisy-key-19a0";
pub const KEY_B: &str = "bench-quiet-key-7be2";

pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    sorted
        .get(((sorted.len() as f64 * q) as usize).min(sorted.len().saturating_sub(1)))
        .copied()
        .unwrap_or(f64::NAN)
}

/// What the processes under test share.
pub struct Setup {
    /// The index's refresh interval, in seconds: what freshness is compared with.
    pub refresh_secs: f64,
    database: String,
    topic: String,
    alias: String,
    keys: PathBuf,
    dir: PathBuf,
}

impl Setup {
    pub async fn new() -> Self {
        let topic = unique("bench-fresh-events");
        kafka::create_topics(&[(&topic, 3), (&format!("{topic}.dlq"), 3)]).await;
        let layout = IndexLayout::new(unique("bench-fresh")).unwrap();
        let settings = IndexSettings {
            replicas: 0,
            ..IndexSettings::default()
        };
        install(
            &reqwest::Client::new(),
            &SearchEndpoint::new(rig().search_url()),
            &layout,
            &settings,
        )
        .await
        .expect("index installed");
        let dir = std::env::temp_dir().join(unique("bench-fresh"));
        std::fs::create_dir_all(&dir).unwrap();
        let keys = dir.join("keys.yaml");
        let digest = |k: &str| -> String {
            Sha256::digest(k.as_bytes())
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect()
        };
        std::fs::write(
            &keys,
            format!(
                "- name: noisy\n  tenant: noisy\n  sha256: {}\n- name: quiet\n  tenant: quiet\n  sha256: {}\n",
                digest(KEY_A),
                digest(KEY_B)
            ),
        )
        .unwrap();
        Self {
            refresh_secs: settings
                .refresh_interval
                .strip_suffix('s')
                .and_then(|s| s.parse().ok())
                .expect("a refresh interval in seconds"),
            database: unique("bench_fresh").replace('-', "_"),
            topic,
            alias: layout.alias().to_owned(),
            keys,
            dir,
        }
    }

    pub fn spawn(&self, binary: &Path, args: &[&str], env: &[(&str, String)], log: &str) -> Child {
        Command::new(binary)
            .args(args)
            .env("RUST_LOG", "warn")
            .env("MONGODB_URI", rig().mongodb_uri())
            .env("MONGODB_DATABASE", &self.database)
            .env("KAFKA_BOOTSTRAP_SERVERS", rig().kafka())
            .env("KAFKA_TOPIC", &self.topic)
            .env("ELASTICSEARCH_URL", rig().search_url())
            .env("ELASTICSEARCH_ALIAS", &self.alias)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::from(
                std::fs::File::create(self.dir.join(log)).unwrap(),
            ))
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{} starts: {e}", binary.display()))
    }

    /// The indexer (release, beside the api-server binary, or BENCH_INDEXER_BIN) consuming the
    /// topic into the index with its metrics on the returned port.
    pub fn indexer(&self) -> (Child, u16) {
        let binary = std::env::var("BENCH_INDEXER_BIN").map_or_else(
            |_| Path::new(env!("CARGO_BIN_EXE_api-server")).with_file_name("indexer"),
            PathBuf::from,
        );
        assert!(
            binary.exists(),
            "no indexer at {} (cargo build --release -p indexer, or BENCH_INDEXER_BIN)",
            binary.display()
        );
        let port = e2e::free_port();
        let child = self.spawn(
            &binary,
            &["run"],
            &[
                ("KAFKA_CONSUMER_GROUP", unique("bench-fresh-group")),
                ("HTTP_ADDR", format!("127.0.0.1:{port}")),
            ],
            "indexer.log",
        );
        (child, port)
    }

    /// The api-server with `limits` (env), ready; its base URL.
    pub async fn api_server(
        &self,
        http: &reqwest::Client,
        limits: &[(&str, String)],
    ) -> (Child, String) {
        let port = e2e::free_port();
        let mut env = vec![
            ("HTTP_ADDR", format!("127.0.0.1:{port}")),
            ("METRICS_ADDR", format!("127.0.0.1:{}", e2e::free_port())),
            ("API_KEYS_FILE", self.keys.display().to_string()),
            ("API_WORKER_THREADS", "1".to_owned()),
        ];
        env.extend(limits.iter().cloned());
        let child = self.spawn(
            Path::new(env!("CARGO_BIN_EXE_api-server")),
            &[],
            &env,
            &format!("api-server-{port}.log"),
        );
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while http
            .get(format!("{base}/ready"))
            .send()
            .await
            .map_or(true, |r| !r.status().is_success())
        {
            assert!(Instant::now() < deadline, "api-server not ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        (child, base)
    }
}

pub fn stop(mut child: Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

pub async fn create(http: &reqwest::Client, base: &str, key: &str, conversation: Uuid) -> u16 {
    http.post(format!("{base}/v1/messages"))
        .bearer_auth(key)
        .json(&json!({
            "conversationId": conversation,
            "senderId": Uuid::new_v4(),
            "content": "the quarterly planning moves to Thursday; please bring the figures and the open questions",
        }))
        .send()
        .await
        .map_or(0, |r| r.status().as_u16())
}

/// How tenant A sends during a phase.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Flood {
    /// Not at all.
    None,
    /// Open loop at this many creates a second (a client that respects its limit, give or
    /// take: offered a little above it).
    Offered(f64),
    /// This many closed loops, each sending the next create as soon as an answer (201 or 429)
    /// comes: a client that ignores `Retry-After`.
    Hammer(usize),
}

/// Tenant A's creates until `stop`: (accepted, refused).
pub fn flood(
    http: &reqwest::Client,
    base: &str,
    how: Flood,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<(u64, u64)>> {
    let count = |status: u16, ok: &mut u64, refused: &mut u64| match status {
        201 => *ok += 1,
        429 => *refused += 1,
        _ => {}
    };
    match how {
        Flood::None => Vec::new(),
        Flood::Hammer(concurrency) => (0..concurrency)
            .map(|_| {
                let (http, base, stop) = (http.clone(), base.to_owned(), stop.clone());
                tokio::spawn(async move {
                    let conversation = Uuid::new_v4();
                    let (mut ok, mut refused) = (0, 0);
                    while !stop.load(Ordering::Relaxed) {
                        let status = create(&http, &base, KEY_A, conversation).await;
                        count(status, &mut ok, &mut refused);
                    }
                    (ok, refused)
                })
            })
            .collect(),
        Flood::Offered(rate) => {
            let (http, base, stop) = (http.clone(), base.to_owned(), stop.clone());
            vec![tokio::spawn(async move {
                let conversation = Uuid::new_v4();
                let started = Instant::now();
                let mut sent = futures::stream::FuturesUnordered::new();
                let (mut ok, mut refused, mut i) = (0, 0, 0u64);
                while !stop.load(Ordering::Relaxed) {
                    let due = started + Duration::from_secs_f64(i as f64 / rate);
                    tokio::select! {
                        () = tokio::time::sleep_until(due.into()) => {
                            let (http, base) = (http.clone(), base.clone());
                            sent.push(async move { create(&http, &base, KEY_A, conversation).await });
                            i += 1;
                        }
                        Some(status) = futures::StreamExt::next(&mut sent) => {
                            count(status, &mut ok, &mut refused);
                        }
                    }
                }
                while let Some(status) = futures::StreamExt::next(&mut sent).await {
                    count(status, &mut ok, &mut refused);
                }
                (ok, refused)
            })]
        }
    }
}

/// One phase's figures.
#[derive(Debug, Clone, Copy)]
pub struct Phase {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
    pub b_sent: usize,
    pub b_refused: usize,
    pub b_unseen: usize,
    pub a_ok_rate: f64,
    pub a_refused_rate: f64,
    /// p99 of the watcher's searches (request to answer).
    pub search_p99: f64,
    /// p99 of the indexer's own freshness (event timestamp → engine acknowledgement), A's
    /// events and B's alike: the pipeline without the refresh and the search.
    pub indexer_p99: f64,
}

/// B's trickle for `secs`, with A sending as `how` says; freshness of B's creates.
pub async fn phase(
    http: &reqwest::Client,
    base: &str,
    indexer_port: u16,
    secs: f64,
    trickle: u32,
    how: Flood,
) -> Phase {
    let conversation = Uuid::new_v4();
    let acked: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let seen: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let searches: Arc<Mutex<Vec<f64>>> = Arc::default();
    let before = scrape(http, indexer_port).await;
    let stop = Arc::new(AtomicBool::new(false));
    let watching = Arc::new(AtomicBool::new(true));
    let watcher = {
        let (http, base, seen, watching, searches) = (
            http.clone(),
            base.to_owned(),
            seen.clone(),
            watching.clone(),
            searches.clone(),
        );
        tokio::spawn(async move {
            let url = format!("{base}/v1/search?conversationId={conversation}&limit=100");
            while watching.load(Ordering::Relaxed) {
                let asked = Instant::now();
                let answer = http.get(&url).bearer_auth(KEY_B).send().await;
                searches.lock().unwrap().push(asked.elapsed().as_secs_f64());
                if let Ok(r) = answer
                    && let Ok(body) = r.json::<Value>().await
                {
                    let now = Instant::now();
                    let mut seen = seen.lock().unwrap();
                    for item in body["items"].as_array().into_iter().flatten() {
                        if let Some(id) = item["id"].as_str() {
                            seen.entry(id.to_owned()).or_insert(now);
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let flooders = flood(http, base, how, &stop);
    let started = Instant::now();
    let (b_refused, b_sent) = (
        Arc::new(AtomicU64::new(0)),
        (secs * f64::from(trickle)) as usize,
    );
    let mut writes = Vec::new();
    for i in 0..b_sent {
        tokio::time::sleep_until(
            (started + Duration::from_secs_f64(i as f64 / f64::from(trickle))).into(),
        )
        .await;
        let (http, base, acked, b_refused) = (
            http.clone(),
            base.to_owned(),
            acked.clone(),
            b_refused.clone(),
        );
        writes.push(tokio::spawn(async move {
            let r = http
                .post(format!("{base}/v1/messages"))
                .bearer_auth(KEY_B)
                .json(&json!({"conversationId": conversation, "senderId": Uuid::new_v4(), "content": "a quiet tenant's message"}))
                .send()
                .await;
            match r {
                Ok(r) if r.status().as_u16() == 201 => {
                    let at = Instant::now();
                    if let Ok(body) = r.json::<Value>().await
                        && let Some(id) = body["id"].as_str()
                    {
                        acked.lock().unwrap().insert(id.to_owned(), at);
                    }
                }
                _ => {
                    b_refused.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for w in writes {
        w.await.unwrap();
    }
    let flood_secs = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let (mut a_ok, mut a_refused) = (0, 0);
    for f in flooders {
        let (ok, refused) = f.await.unwrap();
        a_ok += ok;
        a_refused += refused;
    }
    // Every acknowledged create of B seen, or 30 s.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let done = {
            let (acked, seen) = (acked.lock().unwrap(), seen.lock().unwrap());
            acked.keys().all(|id| seen.contains_key(id))
        };
        if done || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    watching.store(false, Ordering::Relaxed);
    watcher.await.unwrap();
    let after = scrape(http, indexer_port).await;
    let mut searches = searches.lock().unwrap().clone();
    searches.sort_by(f64::total_cmp);
    let (acked, seen) = (acked.lock().unwrap(), seen.lock().unwrap());
    let mut lags: Vec<f64> = acked
        .iter()
        .filter_map(|(id, at)| Some(seen.get(id)?.saturating_duration_since(*at).as_secs_f64()))
        .collect();
    lags.sort_by(f64::total_cmp);
    Phase {
        p50: quantile(&lags, 0.5),
        p99: quantile(&lags, 0.99),
        max: lags.last().copied().unwrap_or(f64::NAN),
        b_sent,
        b_refused: b_refused.load(Ordering::Relaxed) as usize,
        b_unseen: acked.len() - lags.len(),
        a_ok_rate: a_ok as f64 / flood_secs,
        a_refused_rate: a_refused as f64 / flood_secs,
        search_p99: quantile(&searches, 0.99),
        indexer_p99: match (before, after) {
            (Some(b), Some(a)) => histogram_quantile(&b, &a, "indexer_freshness_seconds", 0.99),
            _ => f64::NAN,
        },
    }
}

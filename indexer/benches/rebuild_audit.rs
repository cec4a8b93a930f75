//! `indexer rebuild` and `indexer audit` on BENCH_DOCS (default 200,000) messages in MongoDB,
//! next to their raw ceilings measured in the same run on the rig:
//!
//! - raw scan: one cursor over the collection in `_id` order, 1,000 per batch, each document
//!   decoded as the message it is (what both commands read);
//! - raw `_bulk`: the same documents as search documents with their versions as external
//!   versions, 1,000 per request, one request at a time (what the rebuild writes, in the shape it
//!   writes it).
//!
//! - raw walk: the rebuilt index read in `id` order with `search_after`, 1,000 hits per page,
//!   only the fields the audit reads (what the audit reads of the index).
//!
//! Both commands read and write one page at a time, so the rebuild's ceiling is the scan and
//! the bulk one after the other, 1 / (1/scan + 1/bulk), and the audit's is the scan and the
//! walk, 1 / (1/scan + 1/walk); the audit is also shown against the raw scan alone. Rounds
//! alternate ceilings and commands on fresh indices; the ratios are medians of per-round
//! ratios; peak RSS is the process's VmHWM.
//!
//! `make bench-rebuild` (= `cargo bench -p indexer --bench rebuild_audit`) while the rig is up.
//! BENCH_DOCS and BENCH_ROUNDS (default 3) tune it.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use e2e::{rig::rig, unique};
use futures::TryStreamExt;
use mongodb::bson::DateTime;
use pipeline_contract::document::{StoredMessage, document_of};
use pipeline_contract::search::{IndexLayout, SearchDocument, field};
use serde_json::{Value, json};
use uuid::Uuid;

mod support;
use support::{drop_layout, env_or, fresh_layout, median, raw_bulk};

/// `total` stored messages: versions 1 to 3, every tenth a tombstone.
fn messages(total: usize) -> Vec<StoredMessage> {
    let now = DateTime::now();
    (0..total)
        .map(|i| {
            let deleted = i % 10 == 9;
            StoredMessage {
                id: Uuid::new_v4().to_string(),
                tenant_id: format!("tenant-{}", i % 7),
                conversation_id: Uuid::new_v4().to_string(),
                sender_id: (!deleted).then(|| Uuid::new_v4().to_string()),
                content: (!deleted).then(|| {
                    format!(
                        "message {i} about the quarterly planning of team {}",
                        i % 97
                    )
                }),
                metadata_json: (!deleted)
                    .then(|| format!(r#"{{"channel":"c{}","priority":{}}}"#, i % 13, i % 3)),
                timestamp: now,
                updated_at: now,
                version: 1 + (i % 3) as i64,
                deleted,
                deleted_at: deleted.then_some(now),
                fingerprint: None,
                correlation_id: "bench".into(),
            }
        })
        .collect()
}

/// One cursor over the collection, every document decoded; documents/s.
async fn raw_scan(collection: &mongodb::Collection<StoredMessage>, total: usize) -> f64 {
    let started = Instant::now();
    let seen: usize = collection
        .find(mongodb::bson::doc! {})
        .sort(mongodb::bson::doc! {"_id": 1})
        .batch_size(1000)
        .await
        .unwrap()
        .try_fold(0, |n, _| async move { Ok(n + 1) })
        .await
        .unwrap();
    assert_eq!(seen, total);
    total as f64 / started.elapsed().as_secs_f64()
}

/// The index behind `alias` read in id order, a page of 1,000 at a time; documents/s.
async fn raw_walk(http: &reqwest::Client, alias: &str, total: usize) -> f64 {
    let url = format!("{}/{alias}/_search", rig().search_url());
    // What the rebuild wrote is searchable after a refresh; the audit begins with one too.
    let started = Instant::now();
    http.post(format!("{}/{alias}/_refresh", rig().search_url()))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();
    let (mut seen, mut after): (usize, Option<Value>) = (0, None);
    loop {
        let mut body = json!({
            "size": 1000,
            "sort": [{field::ID: "asc"}],
            "_source": [field::DELETED],
            "version": true,
            "track_total_hits": false,
            "query": {"match_all": {}},
        });
        if let Some(after) = after.take() {
            body["search_after"] = after;
        }
        let answer: Value = http
            .post(&url)
            .json(&body)
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap()
            .json()
            .await
            .unwrap();
        let hits = answer["hits"]["hits"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        seen += hits.len();
        match hits.last() {
            Some(last) if hits.len() == 1000 => after = Some(last["sort"].clone()),
            _ => break,
        }
    }
    assert_eq!(seen, total, "the walk did not see every document");
    total as f64 / started.elapsed().as_secs_f64()
}

/// Runs `indexer <args>` to its end: (seconds, peak RSS in MiB, exit code).
fn run(args: &[&str]) -> (f64, f64, i32) {
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_indexer"))
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("start the indexer");
    let mut peak = 0u64;
    let status = loop {
        // VmHWM only grows: the last read before the exit is the peak, give or take 20 ms.
        if let Some(kib) = e2e::memory::peak_rss_kib(child.id()) {
            peak = peak.max(kib);
        }
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(1800),
            "indexer {args:?} did not end in 30 minutes"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    (
        started.elapsed().as_secs_f64(),
        peak as f64 / 1024.0,
        status.code().unwrap_or(-1),
    )
}

async fn drop_indices(http: &reqwest::Client, layout: &IndexLayout) {
    let base = rig().search_url();
    for path in [
        layout.index_of(1),
        layout.index_of(2),
        format!("_index_template/{}", layout.template_name()),
    ] {
        let _ = http.delete(format!("{base}/{path}")).send().await;
    }
}

#[tokio::main]
async fn main() {
    let total: usize = env_or("BENCH_DOCS", 200_000);
    let rounds: usize = env_or("BENCH_ROUNDS", 3).max(1);
    let http = reqwest::Client::new();
    let database = unique("bench-rebuild").replace('-', "_");
    let client = mongodb::Client::with_uri_str(rig().mongodb_uri())
        .await
        .unwrap();
    let collection = client
        .database(&database)
        .collection::<StoredMessage>("messages");
    let stored = messages(total);
    let t = Instant::now();
    for chunk in stored.chunks(1000) {
        collection.insert_many(chunk).await.unwrap();
    }
    println!(
        "stored {total} messages in {database} in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let docs: Vec<SearchDocument> = stored
        .iter()
        .map(|m| SearchDocument::try_from(m.to_event().unwrap()).unwrap())
        .collect();
    assert!(document_of(&stored[0]).is_ok());
    let topic = unique("bench-rebuild-events");
    e2e::kafka::create_topics(&[(&topic, 3)]).await;
    let common = |command: &'static str, alias: String| -> Vec<String> {
        [
            command,
            "--mongodb-uri",
            rig().mongodb_uri(),
            "--mongodb-database",
            &database,
            "--bootstrap-servers",
            rig().kafka(),
            "--topic",
            &topic,
            "--search-url",
            rig().search_url(),
            "--alias",
            &alias,
        ]
        .map(str::to_owned)
        .to_vec()
    };

    let (mut rebuild_ratios, mut audit_ratios, mut audit_scan_ratios) =
        (Vec::new(), Vec::new(), Vec::new());
    let mut walks = Vec::new();
    let (mut rebuild_rates, mut audit_rates, mut scans, mut bulks) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut rebuild_rss, mut audit_rss) = (0f64, 0f64);
    for round in 1..=rounds {
        let scan = raw_scan(&collection, total).await;
        let bulk_layout = fresh_layout(&http, "bench-rebuild-bulk").await;
        let bulk = raw_bulk(&http, &bulk_layout, &docs, 1000, 1).await;
        drop_layout(&http, &bulk_layout).await;

        // The rebuild builds generation 2 beside the (empty) first and swaps the alias to it.
        let layout = fresh_layout(&http, "bench-rebuild").await;
        let alias = layout.alias().to_owned();
        let args = common("rebuild", alias.clone());
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let (secs, rss, code) = run(&argv);
        assert_eq!(code, 0, "indexer rebuild failed");
        let rebuild = total as f64 / secs;
        let walk = raw_walk(&http, &alias, total).await;
        let mut args = common("audit", alias);
        args.extend(["--group".to_owned(), unique("bench-audit")]);
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let (audit_secs, audit_peak, audit_code) = run(&argv);
        assert_eq!(audit_code, 0, "the audit found the rebuilt index diverged");
        let audit = total as f64 / audit_secs;
        drop_indices(&http, &layout).await;

        let ceiling = 1.0 / (1.0 / scan + 1.0 / bulk);
        let audit_ceiling = 1.0 / (1.0 / scan + 1.0 / walk);
        println!(
            "  round {round}: scan {scan:.0}/s, bulk {bulk:.0}/s, walk {walk:.0}/s; \
             rebuild {rebuild:.0}/s ({:.2} of {ceiling:.0}), {rss:.0} MiB; \
             audit {audit:.0}/s ({:.2} of {audit_ceiling:.0}, {:.2} of the scan), {audit_peak:.0} MiB",
            rebuild / ceiling,
            audit / audit_ceiling,
            audit / scan
        );
        rebuild_ratios.push(rebuild / ceiling);
        audit_ratios.push(audit / audit_ceiling);
        audit_scan_ratios.push(audit / scan);
        walks.push(walk);
        rebuild_rates.push(rebuild);
        audit_rates.push(audit);
        scans.push(scan);
        bulks.push(bulk);
        rebuild_rss = rebuild_rss.max(rss);
        audit_rss = audit_rss.max(audit_peak);
    }
    let _ = client.database(&database).drop().await;
    println!(
        "{total} messages, {rounds} rounds (medians): raw scan {:.0}/s, raw _bulk {:.0}/s, \
         raw walk {:.0}/s; rebuild {:.0}/s = {:.2} of scan-then-bulk, peak RSS {rebuild_rss:.0} MiB; \
         audit {:.0}/s = {:.2} of scan-then-walk ({:.2} of the raw scan), peak RSS {audit_rss:.0} MiB",
        median(&mut scans),
        median(&mut bulks),
        median(&mut walks),
        median(&mut rebuild_rates),
        median(&mut rebuild_ratios),
        median(&mut audit_rates),
        median(&mut audit_ratios),
        median(&mut audit_scan_ratios),
    );
}

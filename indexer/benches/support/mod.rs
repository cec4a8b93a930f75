//! What the indexer's benchmarks share: settings from the environment, fresh index layouts on
//! the rig's engine, the raw `_bulk` ceiling, medians.

use std::time::Instant;

use e2e::{rig::rig, unique};
use futures::StreamExt;
use pipeline_contract::install::{SearchEndpoint, install};
use pipeline_contract::search::{IndexLayout, IndexSettings, SearchDocument};

pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub async fn fresh_layout(http: &reqwest::Client, prefix: &str) -> IndexLayout {
    let layout = IndexLayout::new(unique(prefix)).unwrap();
    let settings = IndexSettings {
        replicas: 0,
        ..IndexSettings::default()
    };
    install(
        http,
        &SearchEndpoint::new(rig().search_url()),
        &layout,
        &settings,
    )
    .await
    .expect("install");
    layout
}

/// Deletes what `fresh_layout` created, so runs do not pile up indices on the rig's engine.
pub async fn drop_layout(http: &reqwest::Client, layout: &IndexLayout) {
    let base = rig().search_url();
    for path in [
        layout.first_index(),
        format!("_index_template/{}", layout.template_name()),
    ] {
        let _ = http.delete(format!("{base}/{path}")).send().await;
    }
}

/// Sends `docs` with plain `_bulk` requests of `batch` items, `concurrency` at a time; docs/s.
pub async fn raw_bulk(
    http: &reqwest::Client,
    layout: &IndexLayout,
    docs: &[SearchDocument],
    batch: usize,
    concurrency: usize,
) -> f64 {
    let bodies: Vec<Vec<u8>> = docs
        .chunks(batch)
        .map(|c| indexer::bulk::encode(layout, c).body)
        .collect();
    let url = format!("{}/_bulk", rig().search_url());
    let started = Instant::now();
    let results: Vec<bool> = futures::stream::iter(bodies.into_iter().map(|body| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let r = http
                .post(url)
                .header("content-type", "application/x-ndjson")
                .body(body)
                .send()
                .await
                .unwrap();
            let v: serde_json::Value = r.json().await.unwrap();
            // With several requests in flight an older version can arrive after a newer one:
            // a version conflict is the expected answer, as it is for the indexer.
            v["items"].as_array().is_some_and(|items| {
                items.iter().all(|i| {
                    let status = i["index"]["status"].as_u64().unwrap_or(0);
                    (200..300).contains(&status)
                        || (status == 409
                            && i["index"]["error"]["type"] == "version_conflict_engine_exception")
                })
            })
        }
    }))
    .buffer_unordered(concurrency)
    .collect()
    .await;
    let elapsed = started.elapsed().as_secs_f64();
    assert!(
        results.iter().all(|ok| *ok),
        "the ceiling run had item errors"
    );
    docs.len() as f64 / elapsed
}

pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

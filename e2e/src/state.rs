//! The state a scenario compares: per message id, its version and whether it is deleted, as
//! MongoDB stores it, as the index holds it, and as a stream of events leaves it.

use std::collections::HashMap;

use pipeline_contract::MessageEvent;
use pipeline_contract::install::SearchEndpoint;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::rig::rig;

/// Per message id: (version, deleted).
pub type Versions = HashMap<Uuid, (u64, bool)>;

/// What `events` leave, in any order and with any duplicates: per message, the version of its
/// newest event and whether that event is a delete.
pub fn newest<'a>(events: impl IntoIterator<Item = &'a MessageEvent>) -> Versions {
    let mut state = Versions::new();
    for e in events {
        let version = e.version().expect("events carry versions");
        let entry = state.entry(e.id()).or_insert((0, false));
        if version > entry.0 {
            *entry = (version, matches!(e, MessageEvent::Deleted(_)));
        }
    }
    state
}

/// Per message id in `database`'s `messages` collection, its version and whether it is a
/// tombstone: what acknowledged writes are checked against.
pub async fn stored(database: &str) -> Versions {
    stored_at(rig().mongodb_uri(), database).await
}

/// [`stored`] on the server of `uri` (a secured one, as a principal allowed to read).
pub async fn stored_at(uri: &str, database: &str) -> Versions {
    use futures::TryStreamExt;
    let client = mongodb::Client::with_uri_str(uri).await.unwrap();
    let docs: Vec<mongodb::bson::Document> = client
        .database(database)
        .collection("messages")
        .find(mongodb::bson::doc! {})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    docs.iter()
        .map(|d| {
            (
                Uuid::parse_str(d.get_str("_id").unwrap()).unwrap(),
                (
                    u64::try_from(d.get_i64("version").unwrap()).unwrap(),
                    d.get_bool("deleted").unwrap(),
                ),
            )
        })
        .collect()
}

/// Per document in `index` (an index or an alias) after a refresh, its external version and
/// whether it is a tombstone; `None` while the search engine does not answer.
pub async fn indexed(index: &str) -> Option<Versions> {
    indexed_at(
        &reqwest::Client::new(),
        &SearchEndpoint::new(rig().search_url()),
        index,
    )
    .await
}

/// [`indexed`] through `endpoint` (a secured engine, as a principal allowed to read; one that
/// may not refresh sees what the engine's own refresh made visible).
pub async fn indexed_at(
    http: &reqwest::Client,
    endpoint: &SearchEndpoint,
    index: &str,
) -> Option<Versions> {
    let _ = endpoint
        .request(http, reqwest::Method::POST, &format!("/{index}/_refresh"))
        .send()
        .await;
    // Pages of 5,000 in `id` order: a cluster scenario's index outgrows one 10,000 window.
    let mut out = Versions::new();
    let mut after: Option<Value> = None;
    loop {
        let mut query = json!({
            "query": {"match_all": {}},
            "_source": ["deleted"],
            "size": 5000,
            "sort": [{"id": "asc"}],
        });
        if let Some(after) = &after {
            query["search_after"] = after.clone();
        }
        let body: Value = endpoint
            .request(
                http,
                reqwest::Method::POST,
                &format!("/{index}/_search?version=true"),
            )
            .json(&query)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        let hits = body["hits"]["hits"].as_array()?;
        for h in hits {
            out.insert(
                Uuid::parse_str(h["_id"].as_str()?).ok()?,
                (h["_version"].as_u64()?, h["_source"]["deleted"].as_bool()?),
            );
        }
        match hits.last() {
            Some(last) if hits.len() == 5000 => after = Some(last["sort"].clone()),
            _ => return Some(out),
        }
    }
}

//! Tombstone purge: deletes tombstones whose `deletedAt` is older than the horizon.
//!
//! The horizon must exceed topic retention + segment roll + worst consumer lag: a tombstone is
//! what stops a replayed older event from bringing a deleted message back, so it may only go once
//! no such event can still be read from the topic. Never touches a document that is not a
//! tombstone.

use std::time::Duration;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::sink::SearchSink;

/// The `_delete_by_query` body removing tombstones deleted more than `horizon_days` ago.
pub fn purge_query(horizon_days: u32) -> Value {
    use pipeline_contract::search::field;
    json!({
        "query": {"bool": {"filter": [
            {"term": {field::DELETED: true}},
            {"range": {field::DELETED_AT: {"lt": format!("now-{horizon_days}d")}}}
        ]}}
    })
}

/// Purges once per `interval` until `shutdown`; failures are logged and retried next time.
pub async fn run(
    sink: SearchSink,
    horizon_days: u32,
    interval: Duration,
    shutdown: CancellationToken,
) {
    loop {
        match sink.delete_by_query(&purge_query(horizon_days)).await {
            Ok(deleted) => tracing::info!(deleted, horizon_days, "tombstone purge"),
            Err(error) => {
                tracing::warn!(%error, "tombstone purge failed; next try in one interval")
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_selects_only_old_tombstones() {
        let q = purge_query(21);
        let filters = q["query"]["bool"]["filter"].as_array().unwrap();
        assert_eq!(filters[0], json!({"term": {"deleted": true}}));
        assert_eq!(
            filters[1],
            json!({"range": {"deletedAt": {"lt": "now-21d"}}})
        );
        assert_eq!(
            q["query"]["bool"].as_object().unwrap().len(),
            1,
            "filters only, nothing else"
        );
    }
}

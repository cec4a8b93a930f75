//! The tombstone purge against the rig's search engine: only tombstones older than the horizon go.

mod common;

use std::time::Duration;

use common::{Fixture, history};
use e2e::rig::rig;
use indexer::classify::RequestOutcome;
use indexer::sink::SearchSink;
use pipeline_contract::install::SearchEndpoint;
use pipeline_contract::search::SearchDocument;
use pipeline_contract::{DeletedPayload, MessageEvent, Timestamp};
use uuid::Uuid;

fn tombstone(days_ago: i64) -> SearchDocument {
    let deleted_at =
        Timestamp::from_millis(Timestamp::now().timestamp_millis() - days_ago * 86_400_000)
            .unwrap();
    let event = MessageEvent::Deleted(DeletedPayload {
        id: Uuid::new_v4(),
        conversation_id: Some(Uuid::new_v4()),
        tenant_id: "tenant-a".into(),
        version: Some(2),
        deleted_at: Some(deleted_at),
    });
    SearchDocument::from_event(&event).unwrap()
}

#[tokio::test]
async fn purge_removes_only_tombstones_past_the_horizon() {
    let fixture = Fixture::new(None).await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let sink = SearchSink::new(
        SearchEndpoint::new(rig().search_url()),
        http,
        fixture.layout.clone(),
    );
    let live = SearchDocument::from_event(&history(Uuid::new_v4(), 0, false)[0]).unwrap();
    let (old, recent) = (tombstone(30), tombstone(1));
    let body = indexer::bulk::encode(
        &fixture.layout,
        &[live.clone(), old.clone(), recent.clone()],
    );
    let (outcome, items) = sink.bulk(body.body).await;
    assert!(
        matches!(outcome, RequestOutcome::Response { status: 200, .. }),
        "{outcome:?}"
    );
    assert!(items.iter().all(|i| i.status == 201), "{items:?}");

    // Reading them back also refreshes the index, so the purge's query can see them.
    assert_eq!(fixture.documents().await.len(), 3);
    let deleted = sink
        .delete_by_query(&indexer::purge::purge_query(21))
        .await
        .expect("purge");
    assert_eq!(deleted, 1);
    let mut left: Vec<Uuid> = fixture.documents().await.into_keys().collect();
    left.sort();
    let mut expected = vec![live.id, recent.id];
    expected.sort();
    assert_eq!(left, expected, "the purge removed the wrong documents");
    assert_eq!(
        sink.delete_by_query(&indexer::purge::purge_query(21))
            .await
            .expect("purge"),
        0
    );
}

//! The relay against the rig: every acknowledged change reaches the topic as the contract says
//! (key, headers, full state, versions), and a restart re-publishes nothing it must not miss.

mod common;

use std::time::Duration;

use common::{KEY_A, Server, Setup, converged};
use pipeline_contract::MessageEvent;
use reqwest::{Method, StatusCode};
use serde_json::json;
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_is_on_the_topic_keyed_and_with_contract_headers() {
    let setup = Setup::new("relay-contract").await;
    let server = Server::start(&setup).await;
    let a = server.client(KEY_A);
    let conversation = Uuid::new_v4();
    let created = a
        .send(
            Method::POST,
            "/v1/messages",
            Some(&json!({"conversationId": conversation, "senderId": Uuid::new_v4(), "content": "first", "metadata": {"k": 1}})),
            &[("x-correlation-id", "corr-create")],
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED);
    let id = created.body["id"].as_str().unwrap().to_owned();
    let patched = a
        .send(
            Method::PATCH,
            &format!("/v1/messages/{id}"),
            Some(&json!({"content": "second"})),
            &[("x-correlation-id", "corr-patch")],
        )
        .await;
    assert_eq!(patched.status, StatusCode::OK);
    let deleted = a
        .send(
            Method::DELETE,
            &format!("/v1/messages/{id}"),
            None,
            &[("x-correlation-id", "corr-delete")],
        )
        .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);

    converged(&setup, Duration::from_secs(30)).await;
    let events = setup.events();
    assert_eq!(events.len(), 3, "one record per change: {events:?}");
    let partition = events[0].0.partition;
    let expected = [
        ("corr-create", 1, "message.created"),
        ("corr-patch", 2, "message.updated"),
        ("corr-delete", 3, "message.deleted"),
    ];
    for ((record, event), (correlation, version, kind)) in events.iter().zip(expected) {
        assert_eq!(record.partition, partition, "one key, one partition");
        assert_eq!(
            record.key.as_deref(),
            Some(conversation.to_string().as_str())
        );
        assert_eq!(record.headers["correlation-id"], correlation);
        assert_eq!(record.headers["message-id"], format!("{id}:{version}"));
        assert_eq!(
            record.headers["timestamp"],
            event.changed_at().unwrap().to_string()
        );
        assert_eq!(event.event_type().as_str(), kind);
        assert_eq!(event.version(), Some(version));
        assert_eq!(event.tenant_id(), common::TENANT_A);
    }
    // Full state on every created/updated event, as the API returned it.
    let MessageEvent::Created(first) = &events[0].1 else {
        panic!("{:?}", events[0].1)
    };
    assert_eq!(first.content, "first");
    assert_eq!(
        first.metadata,
        *created.body["metadata"].as_object().unwrap()
    );
    assert_eq!(
        first.timestamp.unwrap().to_string(),
        created.body["timestamp"].as_str().unwrap()
    );
    let MessageEvent::Updated(second) = &events[1].1 else {
        panic!("{:?}", events[1].1)
    };
    assert_eq!(
        (second.content.as_str(), second.metadata.get("k")),
        ("second", Some(&json!(1)))
    );
    assert_eq!(
        second.updated_at.unwrap().to_string(),
        patched.body["updatedAt"].as_str().unwrap()
    );
}

async fn relay_registrations(setup: &Setup) -> Vec<mongodb::bson::Document> {
    use futures::TryStreamExt;
    let client = mongodb::Client::with_uri_str(e2e::rig::rig().mongodb_uri())
        .await
        .unwrap();
    client
        .database(&setup.database)
        .collection::<mongodb::bson::Document>("messages_relay")
        .find(mongodb::bson::doc! {})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_restart_publishes_nothing_twice_and_misses_nothing() {
    let setup = Setup::new("relay-restart").await;
    let mut server = Server::start(&setup).await;
    let a = server.client(KEY_A);
    for i in 0..20 {
        a.create(Uuid::new_v4(), &format!("m{i}")).await;
    }
    converged(&setup, Duration::from_secs(30)).await;
    assert!(server.terminate(), "clean exit on SIGTERM");
    let before = setup.events().len();
    assert_eq!(before, 20);

    // A clean stop that owes nothing removes its registration: the next process has nothing to
    // adopt and sends nothing again (with the default overlap).
    let registrations = relay_registrations(&setup).await;
    assert!(registrations.is_empty(), "{registrations:?}");
    let server = Server::start(&setup).await;
    let b = server.client(KEY_A);
    let late = b.create(Uuid::new_v4(), "after restart").await;
    let published = converged(&setup, Duration::from_secs(30)).await;
    let late_id = Uuid::parse_str(late["id"].as_str().unwrap()).unwrap();
    assert_eq!(published[&late_id], (1, false));
    assert_eq!(setup.events().len(), 21);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tombstones_are_purged_past_the_horizon_once_their_delete_is_published() {
    let mut setup = Setup::new("relay-purge").await;
    // The purge asks the index whether it still holds a tombstone; none without one to ask.
    setup.with_search_index("relay-purge").await;
    // A horizon of 0 days: every tombstone is past it as soon as its delete is on Kafka.
    let server = Server::start_with(
        &setup,
        &[
            ("INDEXER_TOMBSTONE_HORIZON_DAYS", "0"),
            ("API_PURGE_INTERVAL_SECONDS", "1"),
            // The index never held these tombstones (no indexer runs here): one second after
            // a purge notes that, the next one removes them.
            ("API_PURGE_INDEX_GRACE_SECONDS", "1"),
        ],
    )
    .await;
    let a = server.client(KEY_A);
    let kept = a.create(Uuid::new_v4(), "kept").await;
    let gone = a.create(Uuid::new_v4(), "gone").await;
    let gone_id = Uuid::parse_str(gone["id"].as_str().unwrap()).unwrap();
    assert_eq!(
        a.delete(&gone_id.to_string(), None).await.status,
        StatusCode::NO_CONTENT
    );
    e2e::wait::until("the tombstone purged", Duration::from_secs(30), || async {
        (!setup.stored().await.contains_key(&gone_id)).then_some(())
    })
    .await;
    let stored = setup.stored().await;
    let kept_id = Uuid::parse_str(kept["id"].as_str().unwrap()).unwrap();
    assert_eq!(
        stored.get(&kept_id),
        Some(&(1, false)),
        "live messages stay"
    );
    assert_eq!(
        setup.published()[&gone_id],
        (2, true),
        "the delete was published first"
    );
}

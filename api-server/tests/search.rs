//! `GET /v1/search` through the whole pipeline on the rig: api-server → Kafka → the real
//! indexer (in this process) → OpenSearch → search. Always the caller's tenant, never a deleted
//! message, filters and `search_after` pages.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use clap::Parser;
use common::{Api, KEY_A, KEY_B, Server, Setup};
use e2e::{rig::rig, unique, wait};
use indexer::config::{Cli, Command};
use indexer::metrics::Metrics;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

fn contents(reply: &common::Reply) -> BTreeSet<String> {
    reply.body["items"]
        .as_array()
        .unwrap_or_else(|| panic!("{reply:?}"))
        .iter()
        .map(|m| m["content"].as_str().unwrap().to_owned())
        .collect()
}

async fn search_until(api: &Api, query: &str, expected: &[&str]) {
    let expected: BTreeSet<String> = expected.iter().map(|s| (*s).to_owned()).collect();
    wait::until(
        &format!("search {query} = {expected:?}"),
        Duration::from_secs(30),
        || {
            let expected = expected.clone();
            async move {
                let reply = api.get(&format!("/v1/search?{query}")).await;
                assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
                (contents(&reply) == expected).then_some(())
            }
        },
    )
    .await;
}

type Indexer = tokio::task::JoinHandle<Result<(), indexer::run::RunError>>;

/// The real indexer, in this process, from the setup's topic to `alias` as `group`.
fn start_indexer(
    setup: &Setup,
    alias: &str,
    group: &str,
    extra: &[&str],
) -> (CancellationToken, Indexer) {
    let mut argv = vec![
        "indexer",
        "run",
        "--bootstrap-servers",
        rig().kafka(),
        "--topic",
        &setup.topic,
        "--group",
        group,
        "--search-url",
        rig().search_url(),
        "--alias",
        alias,
        "--batch-linger-ms",
        "20",
        "--http-addr",
        "127.0.0.1:0",
    ];
    argv.extend_from_slice(extra);
    let Command::Run(args) = Cli::try_parse_from(argv).unwrap().command else {
        unreachable!()
    };
    let stop = CancellationToken::new();
    let indexer = tokio::spawn(indexer::run::run(
        args,
        std::sync::Arc::new(Metrics::new()),
        stop.clone(),
    ));
    (stop, indexer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_finds_the_callers_live_messages_only() {
    let mut setup = Setup::new("search").await;
    e2e::kafka::create_topic(&format!("{}.dlq", setup.topic), 1).await;
    let alias = setup.with_search_index("search-messages").await;

    let (stop, indexer) = start_indexer(&setup, &alias, &unique("search-indexer"), &[]);

    let server = Server::start(&setup).await;
    let (a, b) = (server.client(KEY_A), server.client(KEY_B));
    let (c1, c2) = (Uuid::new_v4(), Uuid::new_v4());
    let fox = a.create(c1, "the quick brown fox").await;
    a.create(c1, "a lazy dog sleeps").await;
    let thinking = a.create(c2, "quick thinking").await;
    let doomed = a.create(c1, "quick but soon deleted").await;
    b.create(c1, "quick tenant b").await;
    search_until(
        &a,
        "q=quick",
        &[
            "the quick brown fox",
            "quick thinking",
            "quick but soon deleted",
        ],
    )
    .await;
    assert_eq!(
        a.delete(doomed["id"].as_str().unwrap(), None).await.status,
        StatusCode::NO_CONTENT
    );
    search_until(&a, "q=quick", &["the quick brown fox", "quick thinking"]).await;

    // Tenant B sees its own message only, by text, conversation or sender.
    search_until(&b, "q=quick", &["quick tenant b"]).await;
    for query in [
        "q=fox".to_owned(),
        format!("conversationId={c2}"),
        format!("senderId={}", fox["senderId"].as_str().unwrap()),
        "q=quick%20thinking".to_owned(),
    ] {
        let reply = b.get(&format!("/v1/search?{query}")).await;
        assert_eq!(reply.body["items"], json!([]), "{query}: {reply:?}");
    }

    // Filters, and all words must match.
    search_until(
        &a,
        &format!("q=quick&conversationId={c1}"),
        &["the quick brown fox"],
    )
    .await;
    search_until(
        &a,
        &format!("senderId={}", thinking["senderId"].as_str().unwrap()),
        &["quick thinking"],
    )
    .await;
    search_until(&a, "q=quick%20fox", &["the quick brown fox"]).await;
    let found = a.get("/v1/search?q=brown").await;
    assert_eq!(
        found.body["items"][0], fox,
        "the message as the API returns it"
    );

    // Pages of one, newest first, through search_after cursors.
    let mut seen: Vec<Value> = Vec::new();
    let mut query = "limit=1".to_owned();
    loop {
        let page = a.get(&format!("/v1/search?{query}")).await;
        assert_eq!(page.status, StatusCode::OK, "{page:?}");
        seen.extend(page.body["items"].as_array().unwrap().iter().cloned());
        match page.body.get("nextCursor").and_then(Value::as_str) {
            Some(cursor) => query = format!("limit=1&cursor={cursor}"),
            None => break,
        }
        assert!(seen.len() <= 3, "{seen:?}");
    }
    assert_eq!(seen.len(), 3);
    let times: Vec<&str> = seen
        .iter()
        .map(|m| m["timestamp"].as_str().unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "{times:?}");

    a.get(&format!("/v1/search?q={}", "x".repeat(1025)))
        .await
        .problem(400);
    a.get("/v1/search?cursor=garbage").await.problem(400);
    a.get("/v1/search?limit=500").await.problem(400);
    a.send(Method::GET, "/v1/search?from=yesterday", None, &[])
        .await
        .problem(400);

    stop.cancel();
    indexer.await.unwrap().expect("indexer stopped cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_search_engine_is_503_and_writes_go_on() {
    let mut setup = Setup::new("search-down").await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    setup.search = Some((url, "messages".into()));
    let server = Server::start(&setup).await;
    let a = server.client(KEY_A);
    a.get("/v1/search?q=x").await.problem(503);
    a.create(Uuid::new_v4(), "still accepted").await;
}

/// An `Idempotency-Key` used again after its message was deleted and its tombstone purged makes
/// the same id again, at version 1. The index keeps its own tombstone (version 2) until the
/// indexer purges it, and the engine then remembers the deleted version for `index.gc_deletes`:
/// either would outrank the new message for good. So the api-server purges a tombstone only a
/// grace after a purge found the index without it: until then the key is answered 409 (the
/// message was deleted); after, the new message is created and found.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_used_again_after_the_purge_makes_a_message_that_search_finds() {
    let mut setup = Setup::new("search-reuse").await;
    e2e::kafka::create_topic(&format!("{}.dlq", setup.topic), 1).await;
    // The engine forgets a deleted version after 1 s here (60 s by default).
    let settings = pipeline_contract::search::IndexSettings {
        replicas: 0,
        gc_deletes: Some("1s".into()),
        ..Default::default()
    };
    let alias = setup
        .with_search_index_settings("search-reuse", settings)
        .await;
    let group = unique("search-reuse-indexer");
    let (stop, indexer) = start_indexer(&setup, &alias, &group, &[]);
    // The api-server purges every second whatever is deleted (a horizon of 0 days).
    let server = Server::start_with(
        &setup,
        &[
            ("INDEXER_TOMBSTONE_HORIZON_DAYS", "0"),
            ("API_PURGE_INTERVAL_SECONDS", "1"),
            ("API_PURGE_INDEX_GRACE_SECONDS", "3"),
        ],
    )
    .await;
    let a = server.client(KEY_A);
    let create = |content: &'static str| {
        let a = a.clone();
        async move {
            a.send(
                Method::POST,
                "/v1/messages",
                Some(&json!({"conversationId": Uuid::from_u128(1), "senderId": Uuid::from_u128(2), "content": content})),
                &[("idempotency-key", "order-42")],
            )
            .await
        }
    };
    let first = create("first life").await;
    assert_eq!(first.status, StatusCode::CREATED, "{first:?}");
    let id = first.body["id"].as_str().unwrap().to_owned();
    search_until(&a, "q=life", &["first life"]).await;
    assert_eq!(a.delete(&id, None).await.status, StatusCode::NO_CONTENT);
    search_until(&a, "q=life", &[]).await;

    // Purges run and keep the tombstone: the index still holds its own.
    let kept = || common::metric(&server, "api_tombstones_kept_total");
    wait::until(
        "a purge that kept the tombstone",
        Duration::from_secs(30),
        || async { (kept().await.unwrap_or(0.0) >= 2.0).then_some(()) },
    )
    .await;
    let uuid = Uuid::parse_str(&id).unwrap();
    assert_eq!(setup.stored().await.get(&uuid), Some(&(2, true)));
    create("second life").await.problem(409);

    // The indexer purges the index's tombstone (its horizon 0 days too); then MongoDB's goes.
    stop.cancel();
    indexer.await.unwrap().expect("indexer stopped cleanly");
    let purging = [
        "--tombstone-horizon-days",
        "0",
        "--purge-interval-seconds",
        "1",
    ];
    let (stop, indexer) = start_indexer(&setup, &alias, &group, &purging);
    wait::until(
        "the tombstone purged from MongoDB",
        Duration::from_secs(60),
        || async { (!setup.stored().await.contains_key(&uuid)).then_some(()) },
    )
    .await;
    let second = create("second life").await;
    assert_eq!(second.status, StatusCode::CREATED, "{second:?}");
    assert_eq!(second.header("idempotent-replayed"), None, "a new message");
    assert_eq!(second.body["id"].as_str(), Some(id.as_str()), "the same id");
    search_until(&a, "q=life", &["second life"]).await;
    stop.cancel();
    indexer.await.unwrap().expect("indexer stopped cleanly");
}

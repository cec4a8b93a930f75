//! Property 1 (no dual-write loss): under a steady stream of creates, updates and deletes the
//! api-server is killed with SIGKILL at random moments and restarted; afterwards, for every
//! message, the highest version on the topic equals its version in MongoDB, every tombstone's
//! delete event is on the topic, and every change a client saw acknowledged is in MongoDB.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use common::{Api, KEY_A, Server, Setup, converged};
use reqwest::{Method, StatusCode};
use serde_json::json;
use uuid::Uuid;

/// What clients saw acknowledged: per id, the highest version and whether it was deleted.
type Acked = Arc<Mutex<HashMap<Uuid, (u64, bool)>>>;

async fn writer(
    base: Arc<RwLock<String>>,
    acked: Acked,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let conversations: Vec<Uuid> = (0..4).map(|_| Uuid::new_v4()).collect();
    let mut mine: Vec<(Uuid, u64)> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let api = Api {
            http: http.clone(),
            base: base.read().unwrap().clone(),
            key: Some(KEY_A.to_owned()),
        };
        let roll = fastrand::u8(0..10);
        let result = if mine.is_empty() || roll < 5 {
            let body = json!({"conversationId": conversations[fastrand::usize(0..4)], "senderId": Uuid::new_v4(), "content": "crash test"});
            send(&api, Method::POST, "/v1/messages".into(), Some(body)).await
        } else {
            let i = fastrand::usize(0..mine.len());
            let (id, _) = mine[i];
            if roll < 9 {
                let body = json!({"content": format!("edit {}", fastrand::u32(..))});
                send(
                    &api,
                    Method::PATCH,
                    format!("/v1/messages/{id}"),
                    Some(body),
                )
                .await
            } else {
                mine.swap_remove(i);
                let reply = send(&api, Method::DELETE, format!("/v1/messages/{id}"), None).await;
                if matches!(reply, Some((StatusCode::NO_CONTENT, _))) {
                    acked.lock().unwrap().entry(id).or_insert((0, false)).1 = true;
                }
                reply.map(|(status, _)| (status, None))
            }
        };
        match result {
            Some((status, Some(body))) if status.is_success() => {
                let id = Uuid::parse_str(body["id"].as_str().unwrap()).unwrap();
                let version = body["version"].as_u64().unwrap();
                if version == 1 {
                    mine.push((id, 1));
                }
                let mut acked = acked.lock().unwrap();
                let entry = acked.entry(id).or_insert((0, false));
                entry.0 = entry.0.max(version);
                done.fetch_add(1, Ordering::Relaxed);
            }
            Some((status, None)) if status.is_success() => {
                done.fetch_add(1, Ordering::Relaxed);
            }
            // Killed mid-request, or not up yet: the client cannot know; try something else.
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

async fn send(
    api: &Api,
    method: Method,
    path: String,
    body: Option<serde_json::Value>,
) -> Option<(StatusCode, Option<serde_json::Value>)> {
    let mut request = api
        .http
        .request(method, format!("{}{path}", api.base))
        .bearer_auth(api.key.as_deref().unwrap());
    if let Some(body) = &body {
        request = request.json(body);
    }
    let response = request.send().await.ok()?;
    let status = response.status();
    let body = response.json().await.ok();
    Some((status, body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_moments_loses_no_acknowledged_change() {
    let setup = Setup::new("crash").await;
    let mut server = Server::start(&setup).await;
    let base = Arc::new(RwLock::new(server.base.clone()));
    let acked: Acked = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..6)
        .map(|_| {
            tokio::spawn(writer(
                base.clone(),
                acked.clone(),
                stop.clone(),
                done.clone(),
            ))
        })
        .collect();

    let kills = 5;
    for round in 0..kills {
        let before = done.load(Ordering::Relaxed);
        // Let the load reach the new process, then kill it at a random moment.
        e2e::wait::until(
            "writes acknowledged by this process",
            Duration::from_secs(30),
            || {
                let done = done.clone();
                async move { (done.load(Ordering::Relaxed) >= before + 20).then_some(()) }
            },
        )
        .await;
        tokio::time::sleep(Duration::from_millis(fastrand::u64(0..1500))).await;
        server.kill9();
        eprintln!(
            "round {round}: killed after {} acknowledged writes",
            done.load(Ordering::Relaxed)
        );
        server = Server::start(&setup).await;
        *base.write().unwrap() = server.base.clone();
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }

    let published = converged(&setup, Duration::from_secs(90)).await;
    let stored = setup.stored().await;
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 50, "enough load: {} messages", acked.len());
    assert!(stored.values().any(|&(_, deleted)| deleted), "some deletes");
    assert!(stored.values().any(|&(v, _)| v > 2), "some updates");
    for (id, (version, deleted)) in &acked {
        let (stored_version, stored_deleted) = stored[id];
        assert!(
            stored_version >= *version,
            "{id}: acked v{version}, stored v{stored_version}"
        );
        if *deleted {
            assert!(stored_deleted, "{id}: acked delete not stored");
            assert_eq!(published[id], (stored_version, true), "{id}: delete event");
        }
    }
    eprintln!(
        "{} acknowledged writes over {} messages, {kills} kills; topic and MongoDB agree",
        done.load(Ordering::Relaxed),
        stored.len()
    );
}

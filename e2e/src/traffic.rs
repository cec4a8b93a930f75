//! Steady writes through the api-server's HTTP API, recording what clients saw acknowledged, so
//! a test can check afterwards that nothing acknowledged was lost.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::json;
use uuid::Uuid;

use crate::state::Versions;

/// What clients saw acknowledged: per id, the highest version and whether it was deleted.
pub type Acked = Arc<Mutex<Versions>>;

/// A client writing until `stop`: half creates, the rest patches and some deletes of messages
/// it created, each request to one of `bases` at random (so replicas change each other's
/// messages), `pause` between requests. Records what was acknowledged in `acked` and counts
/// acknowledged writes in `done`; a request that fails (a server killed mid-request) is
/// simply not counted.
pub async fn writer(
    bases: Arc<RwLock<Vec<String>>>,
    key: String,
    acked: Acked,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    pause: Duration,
) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let conversations: Vec<Uuid> = (0..4).map(|_| Uuid::new_v4()).collect();
    let mut mine: Vec<(Uuid, u64)> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let base = {
            let bases = bases.read().unwrap();
            bases[fastrand::usize(0..bases.len())].clone()
        };
        let roll = fastrand::u8(0..10);
        let result = if mine.is_empty() || roll < 5 {
            let body = json!({"conversationId": conversations[fastrand::usize(0..4)], "senderId": Uuid::new_v4(), "content": "load"});
            send(
                &http,
                &base,
                &key,
                Method::POST,
                "/v1/messages".into(),
                Some(body),
            )
            .await
        } else {
            let i = fastrand::usize(0..mine.len());
            let (id, _) = mine[i];
            if roll < 9 {
                let body = json!({"content": format!("edit {}", fastrand::u32(..))});
                send(
                    &http,
                    &base,
                    &key,
                    Method::PATCH,
                    format!("/v1/messages/{id}"),
                    Some(body),
                )
                .await
            } else {
                mine.swap_remove(i);
                let reply = send(
                    &http,
                    &base,
                    &key,
                    Method::DELETE,
                    format!("/v1/messages/{id}"),
                    None,
                )
                .await;
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
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
}

async fn send(
    http: &reqwest::Client,
    base: &str,
    key: &str,
    method: Method,
    path: String,
    body: Option<serde_json::Value>,
) -> Option<(StatusCode, Option<serde_json::Value>)> {
    let mut request = http
        .request(method, format!("{base}{path}"))
        .bearer_auth(key);
    if let Some(body) = &body {
        request = request.json(body);
    }
    let response = request.send().await.ok()?;
    let status = response.status();
    let body = response.json().await.ok();
    Some((status, body))
}

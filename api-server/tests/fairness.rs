//! Per-tenant limits against the rig: a tenant over its limit gets 429 problem+json with
//! `Retry-After`, changes nothing, and is counted by tenant; another tenant, writing at the same
//! time, is never refused.

mod common;

use std::time::{Duration, Instant};

use common::{KEY_A, KEY_B, Server, Setup, TENANT_A, TENANT_B};
use e2e::wait;
use reqwest::{Method, StatusCode};
use serde_json::json;
use uuid::Uuid;

/// Tenant A's own limit (an override); everyone else has the default, far above what B sends.
const A_RATE: u32 = 5;
const A_BURST: u32 = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_over_its_limit_gets_429_while_another_is_never_refused() {
    let setup = Setup::new("api-fair").await;
    let overrides = format!(
        r#"[{{"tenant": "{TENANT_A}", "requestsPerSecond": {A_RATE}, "burst": {A_BURST}}}]"#
    );
    let server = Server::start_with(
        &setup,
        &[
            ("API_TENANT_RATE", "1000"),
            ("API_TENANT_BURST", "1000"),
            ("API_TENANT_OVERRIDES", &overrides),
        ],
    )
    .await;
    let (a, b) = (server.client(KEY_A), server.client(KEY_B));
    let conversation = Uuid::new_v4();
    let body = move |tenant: &str, i: usize| json!({"conversationId": conversation, "senderId": Uuid::new_v4(), "content": format!("{tenant} {i}")});

    // A floods (8 at a time, as fast as answers come) while B writes at a trickle.
    let started = Instant::now();
    let flood = {
        let a = a.clone();
        tokio::spawn(async move {
            let mut replies = Vec::new();
            for round in 0..10 {
                let batch = (0..8).map(|i| {
                    let a = a.clone();
                    let body = body("a", round * 8 + i);
                    async move { a.send(Method::POST, "/v1/messages", Some(&body), &[]).await }
                });
                replies.extend(futures::future::join_all(batch).await);
            }
            replies
        })
    };
    let mut b_statuses = Vec::new();
    for i in 0..20 {
        let reply = b
            .send(Method::POST, "/v1/messages", Some(&body("b", i)), &[])
            .await;
        b_statuses.push(reply.status);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let a_replies = flood.await.unwrap();
    let elapsed = started.elapsed().as_secs_f64();

    assert!(
        b_statuses.iter().all(|s| *s == StatusCode::CREATED),
        "tenant B is never refused: {b_statuses:?}"
    );
    let created = a_replies
        .iter()
        .filter(|r| r.status == StatusCode::CREATED)
        .count();
    let refused: Vec<_> = a_replies
        .iter()
        .filter(|r| r.status == StatusCode::TOO_MANY_REQUESTS)
        .collect();
    assert_eq!(
        created + refused.len(),
        a_replies.len(),
        "A's answers are 201 or 429"
    );
    // GCRA: the burst, then one per 1/rate seconds.
    let allowed = f64::from(A_BURST) + f64::from(A_RATE) * elapsed;
    assert!(
        created as f64 <= allowed + 1.0,
        "A got {created} creates in {elapsed:.2} s, more than its burst {A_BURST} + {A_RATE}/s"
    );
    assert!(
        !refused.is_empty(),
        "80 creates at once are over a rate of {A_RATE}/s"
    );
    for reply in &refused {
        let problem = reply.problem(429);
        assert_eq!(
            problem["type"],
            "tag:message-pipeline,2026:problem/tenant-over-limit"
        );
        let retry_after: u64 = reply
            .header("retry-after")
            .expect("Retry-After on every 429")
            .parse()
            .expect("Retry-After in whole seconds");
        assert!((1..=2).contains(&retry_after), "{reply:?}");
    }

    // Refused requests changed nothing: MongoDB holds exactly the acknowledged creates.
    let stored = setup.stored().await;
    assert_eq!(stored.len(), created + b_statuses.len(), "{stored:?}");

    // Counted by tenant and limit; B not at all.
    let text = reqwest::get(format!("{}/metrics", server.metrics))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let counted = text
        .lines()
        .find(|l| {
            l.starts_with("api_tenant_throttled_requests_total{")
                && l.contains(&format!("tenant=\"{TENANT_A}\""))
                && l.contains("limit=\"rate\"")
        })
        .and_then(|l| l.rsplit(' ').next()?.parse::<usize>().ok());
    assert_eq!(counted, Some(refused.len()), "{text}");
    assert!(
        !text.contains(&format!("tenant=\"{TENANT_B}\"")),
        "B was never throttled: {text}"
    );

    // After Retry-After, A is served again.
    tokio::time::sleep(Duration::from_secs(1)).await;
    a.create(conversation, "after the wait").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tenant_overrides_stop_the_server_at_start_with_the_reason() {
    let setup = Setup::new("api-fair-bad").await;
    let mut server = Server::launch(
        &setup,
        &[("API_TENANT_OVERRIDES", r#"[{"tenant": "a", "rate": 3}]"#)],
    );
    let log = server.log.clone();
    wait::until("the server to exit", Duration::from_secs(30), || async {
        std::fs::read_to_string(&log)
            .ok()
            .filter(|l| l.contains("--tenant-overrides"))
    })
    .await;
    assert!(!server.terminate(), "it exits with an error");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("unknown field `rate`"), "{text}");
}

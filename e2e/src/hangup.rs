//! Clients that hang up: a request sent whole on a connection of its own, then the connection
//! reset (RST) a few milliseconds later, before any answer, the way a mobile client or a load
//! balancer's timeout drops one; and the retries such clients send afterwards with the same
//! `Idempotency-Key` and body. What each write became is not known to the client: only MongoDB
//! says, and the checks that follow compare MongoDB, Kafka and the index.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpSocket;
use tokio::sync::Semaphore;
use uuid::Uuid;

use crate::state::Versions;

/// What a round of hang-ups did.
#[derive(Debug, Default)]
pub struct HungUp {
    /// Requests sent and reset, per method.
    pub creates: usize,
    pub patches: usize,
    pub deletes: usize,
    /// Of the creates retried with their key: answered 201, of which replayed.
    pub retried: usize,
    pub replayed: usize,
    /// What the retries acknowledged (version 1 of each create).
    pub acked: Versions,
}

/// The `ip:port` of an `http://ip[:port]` base (port 80 when none is given).
fn address(base: &str) -> SocketAddr {
    let authority = base.trim_start_matches("http://").trim_end_matches('/');
    let with_port = if authority.contains(':') {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    with_port
        .parse()
        .unwrap_or_else(|e| panic!("{base} is not http://ip[:port]: {e}"))
}

/// A raw HTTP/1.1 request with a JSON body (or none).
fn request(
    method: &str,
    path: &str,
    key: &str,
    headers: &[(&str, &str)],
    body: Option<&Value>,
) -> Vec<u8> {
    let body = body.map(Value::to_string).unwrap_or_default();
    let mut text = format!(
        "{method} {path} HTTP/1.1\r\nhost: api\r\nauthorization: Bearer {key}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str("\r\n");
    text.push_str(&body);
    text.into_bytes()
}

/// Sends `bytes` on a new connection to `to`, waits `after`, and resets the connection.
async fn send_and_reset(to: SocketAddr, bytes: &[u8], after: Duration) {
    let socket = match to {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .expect("a socket");
    let Ok(mut stream) = socket.connect(to).await else {
        return;
    };
    let _ = stream.write_all(bytes).await;
    tokio::time::sleep(after).await;
    // Linger 0: the close sends RST, not FIN, and nothing is read.
    let _ = stream.set_zero_linger();
    drop(stream);
}

fn create_body(conversation: Uuid, n: usize) -> Value {
    json!({
        "conversationId": conversation,
        "senderId": Uuid::from_u128(n as u128 + 1),
        "content": format!("hung up {n}"),
        "metadata": {"n": n},
    })
}

/// Against the api-server at `base` (as tenant `key`): `creates` creates with an
/// `Idempotency-Key` each, `changes` PATCHes and as many DELETEs of messages made for it, all
/// hung up 0–`within` after they went out, `parallel` at a time; then every create retried with
/// its key and body until it is answered. Panics when a retry is not a 201.
pub async fn round(
    base: &str,
    key: &str,
    creates: usize,
    changes: usize,
    within: Duration,
    parallel: usize,
) -> HungUp {
    let to = address(base);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let conversation = Uuid::new_v4();
    let run = Uuid::new_v4().simple().to_string();
    let mut report = HungUp::default();
    // Messages for the changes, made with an answer.
    let mut targets = Vec::new();
    for n in 0..changes * 2 {
        let reply = http
            .post(format!("{base}/v1/messages"))
            .bearer_auth(key)
            .json(&create_body(conversation, 1_000_000 + n))
            .send()
            .await
            .expect("the api-server answers");
        assert_eq!(reply.status(), StatusCode::CREATED);
        let body: Value = reply.json().await.unwrap();
        targets.push(body["id"].as_str().unwrap().to_owned());
    }
    let gate = Arc::new(Semaphore::new(parallel.max(1)));
    let mut sent = Vec::new();
    let pause = |_: usize| Duration::from_micros(fastrand::u64(0..=within.as_micros() as u64));
    for n in 0..creates {
        let bytes = request(
            "POST",
            "/v1/messages",
            key,
            &[("idempotency-key", &format!("{run}-{n}"))],
            Some(&create_body(conversation, n)),
        );
        let gate = Arc::clone(&gate);
        let after = pause(n);
        sent.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await;
            send_and_reset(to, &bytes, after).await;
        }));
    }
    for (i, id) in targets.iter().enumerate() {
        let bytes = if i % 2 == 0 {
            request(
                "PATCH",
                &format!("/v1/messages/{id}"),
                key,
                &[],
                Some(&json!({"content": format!("patched while hanging up {i}")})),
            )
        } else {
            request("DELETE", &format!("/v1/messages/{id}"), key, &[], None)
        };
        let gate = Arc::clone(&gate);
        let after = pause(i);
        sent.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await;
            send_and_reset(to, &bytes, after).await;
        }));
    }
    for task in sent {
        task.await.unwrap();
    }
    report.creates = creates;
    report.patches = changes;
    report.deletes = changes;
    // The clients come back with the same key and body.
    for n in 0..creates {
        let reply = http
            .post(format!("{base}/v1/messages"))
            .bearer_auth(key)
            .header("idempotency-key", format!("{run}-{n}"))
            .json(&create_body(conversation, n))
            .send()
            .await
            .expect("the api-server answers the retry");
        let status = reply.status();
        let replayed = reply
            .headers()
            .get("idempotent-replayed")
            .is_some_and(|v| v == "true");
        let body: Value = reply.json().await.unwrap_or(Value::Null);
        assert_eq!(status, StatusCode::CREATED, "retry {n}: {body}");
        let id = Uuid::parse_str(body["id"].as_str().unwrap()).unwrap();
        report.acked.insert(id, (1, false));
        report.retried += 1;
        report.replayed += usize::from(replayed);
    }
    report
}

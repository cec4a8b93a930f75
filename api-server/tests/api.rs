//! Every route of the api-server binary against the rig's MongoDB-wire server and Kafka: the
//! happy paths, validation, authentication, tenant isolation, idempotency and `If-Match`.

mod common;

use common::{KEY_A, KEY_B, Server, Setup};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_read_update_delete() {
    let setup = Setup::new("api-crud").await;
    let server = Server::start(&setup).await;
    let a = server.client(KEY_A);
    let conversation = Uuid::new_v4();
    let sender = Uuid::new_v4();

    let created = a
        .send(
            Method::POST,
            "/v1/messages",
            Some(&json!({"conversationId": conversation, "senderId": sender, "content": "hello", "metadata": {"a.b": 1, "$x": [true]}})),
            &[("x-correlation-id", "corr-crud-1")],
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
    assert_eq!(created.header("etag"), Some("\"1\""));
    assert_eq!(created.header("x-correlation-id"), Some("corr-crud-1"));
    let id = created.body["id"].as_str().unwrap().to_owned();
    assert_eq!(
        created.header("location"),
        Some(format!("/v1/messages/{id}").as_str())
    );
    let body = &created.body;
    assert_eq!(body["conversationId"], json!(conversation));
    assert_eq!(body["senderId"], json!(sender));
    assert_eq!(body["content"], json!("hello"));
    assert_eq!(body["metadata"], json!({"a.b": 1, "$x": [true]}));
    assert_eq!(body["version"], json!(1));
    assert!(body.get("updatedAt").is_none());
    assert!(body["timestamp"].as_str().unwrap().ends_with('Z'));

    let read = a.get(&format!("/v1/messages/{id}")).await;
    assert_eq!(read.status, StatusCode::OK);
    assert_eq!(read.header("etag"), Some("\"1\""));
    assert_eq!(&read.body, body);
    // A generated correlation id when none was sent.
    assert!(
        read.header("x-correlation-id")
            .is_some_and(|c| !c.is_empty())
    );

    let patched = a.patch(&id, &json!({"content": "hello again"}), None).await;
    assert_eq!(patched.status, StatusCode::OK, "{patched:?}");
    assert_eq!(patched.header("etag"), Some("\"2\""));
    assert_eq!(patched.body["content"], json!("hello again"));
    assert_eq!(patched.body["metadata"], body["metadata"], "kept");
    assert_eq!(
        patched.body["timestamp"], body["timestamp"],
        "creation time kept"
    );
    assert!(patched.body["updatedAt"].is_string());

    let patched = a
        .patch(&id, &json!({"metadata": {"edited": true}}), Some("\"2\""))
        .await;
    assert_eq!(patched.status, StatusCode::OK, "{patched:?}");
    assert_eq!(
        patched.body["metadata"],
        json!({"edited": true}),
        "replaced"
    );
    assert_eq!(patched.body["content"], json!("hello again"));
    assert_eq!(patched.body["version"], json!(3));

    let deleted = a.delete(&id, None).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    a.get(&format!("/v1/messages/{id}")).await.problem(404);
    a.patch(&id, &json!({"content": "x"}), None)
        .await
        .problem(404);
    a.delete(&id, None).await.problem(404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conversation_pages_are_newest_first_without_deleted_ones() {
    let setup = Setup::new("api-pages").await;
    let server = Server::start(&setup).await;
    let a = server.client(KEY_A);
    let conversation = Uuid::new_v4();
    let mut created = Vec::new();
    for i in 0..7 {
        created.push(a.create(conversation, &format!("message {i}")).await);
    }
    // Noise: another conversation, and another tenant in the same conversation.
    a.create(Uuid::new_v4(), "elsewhere").await;
    server.client(KEY_B).create(conversation, "tenant b").await;
    let gone = created.remove(3);
    assert_eq!(
        a.delete(gone["id"].as_str().unwrap(), None).await.status,
        StatusCode::NO_CONTENT
    );
    created.sort_by(|x, y| {
        (y["timestamp"].as_str(), y["id"].as_str())
            .cmp(&(x["timestamp"].as_str(), x["id"].as_str()))
    });

    let mut seen: Vec<Value> = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/conversations/{conversation}/messages?limit=2&cursor={c}"),
            None => format!("/v1/conversations/{conversation}/messages?limit=2"),
        };
        let page = a.get(&path).await;
        assert_eq!(page.status, StatusCode::OK, "{page:?}");
        pages += 1;
        seen.extend(page.body["items"].as_array().unwrap().iter().cloned());
        match page.body.get("nextCursor").and_then(Value::as_str) {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, created);

    let base = format!("/v1/conversations/{conversation}/messages");
    for (query, parameter) in [
        ("?limit=0", "limit"),
        ("?limit=101", "limit"),
        ("?limit=x", "query"),
        ("?cursor=nope", "cursor"),
        ("?color=red", "query"),
    ] {
        let reply = a.get(&format!("{base}{query}")).await;
        let detail = reply.problem(400)["detail"].as_str().unwrap().to_owned();
        assert!(detail.starts_with(parameter), "{query}: {detail}");
    }
    a.get("/v1/conversations/not-a-uuid/messages")
        .await
        .problem(400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_problems_that_say_why() {
    let setup = Setup::new("api-bad").await;
    let server = Server::start_with(&setup, &[("API_MAX_BODY_BYTES", "4096")]).await;
    let a = server.client(KEY_A);
    let raw = |body: &'static str, content_type: &'static str| {
        let a = a.clone();
        async move {
            let response = a
                .http
                .post(format!("{}/v1/messages", a.base))
                .bearer_auth(a.key.as_deref().unwrap())
                .header("content-type", content_type)
                .body(body)
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let ct = response
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap().to_owned());
            let body: Value = response.json().await.unwrap();
            (status, ct, body)
        }
    };
    for (body, content_type, status, type_suffix) in [
        ("{", "application/json", 400, "malformed-body"),
        ("[]", "application/json", 400, "malformed-body"),
        (
            r#"{"content": 1}"#,
            "application/json",
            400,
            "malformed-body",
        ),
        (
            r#"{"tenantId": "tenant-b"}"#,
            "application/json",
            400,
            "malformed-body",
        ),
        ("{}", "text/plain", 415, "about:blank"),
        ("{}", "application/json", 422, "validation-failed"),
    ] {
        let (got, ct, problem) = raw(body, content_type).await;
        assert_eq!(got, status, "{body}: {problem}");
        assert_eq!(ct.as_deref(), Some("application/problem+json"));
        assert!(
            problem["type"].as_str().unwrap().ends_with(type_suffix),
            "{problem}"
        );
        assert!(problem["detail"].is_string(), "{problem}");
    }
    let (_, _, missing) = raw("{}", "application/json").await;
    let pointers: Vec<&str> = missing["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["pointer"].as_str().unwrap())
        .collect();
    assert_eq!(pointers, ["/conversationId", "/senderId", "/content"]);

    let big = json!({"conversationId": Uuid::new_v4(), "senderId": Uuid::new_v4(), "content": "x".repeat(5000)});
    a.send(Method::POST, "/v1/messages", Some(&big), &[])
        .await
        .problem(413);
    let deep = json!({"conversationId": Uuid::new_v4(), "senderId": Uuid::new_v4(), "content": "x",
                      "metadata": {"a": {"b": {"c": {"d": {"e": 1}}}}}});
    let reply = a.send(Method::POST, "/v1/messages", Some(&deep), &[]).await;
    assert_eq!(
        reply.problem(422)["errors"][0]["pointer"],
        json!("/metadata/a/b/c/d")
    );

    let id = a.create(Uuid::new_v4(), "x").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    a.get("/v1/messages/not-a-uuid").await.problem(400);
    a.patch(&id, &json!({"content": "y"}), Some("3"))
        .await
        .problem(400);
    a.patch(&id, &json!({}), None).await.problem(422);
    let long_key = "k".repeat(256);
    a.send(
        Method::POST,
        "/v1/messages",
        Some(
            &json!({"conversationId": Uuid::new_v4(), "senderId": Uuid::new_v4(), "content": "x"}),
        ),
        &[("idempotency-key", long_key.as_str())],
    )
    .await
    .problem(400);
    a.get("/v1/nothing-here").await.problem(404);
    a.send(Method::PUT, &format!("/v1/messages/{id}"), None, &[])
        .await
        .problem(405);
    // Nothing of the refused requests was stored.
    let stored = setup.stored().await;
    assert_eq!(stored.len(), 1, "{stored:?}");
}

/// U+0000 in every field a client sends: FerretDB on PostgreSQL refused it with `unsupported
/// Unicode escape sequence` and the API answered 500. Now each is a 4xx problem naming the
/// field, and nothing is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_the_storage_cannot_hold_is_refused_in_every_field_before_any_write() {
    let setup = Setup::new("api-nul").await;
    let server = Server::start(&setup).await;
    let a = server.client(KEY_A);
    let (conversation, sender) = (Uuid::new_v4(), Uuid::new_v4());
    let create = |content: &str, metadata: Value| json!({"conversationId": conversation, "senderId": sender, "content": content, "metadata": metadata});
    for (body, pointer) in [
        (create("a\u{0}b", json!({})), "/content"),
        (create("x", json!({"k\u{0}": 1})), "/metadata/k\u{0}"),
        (create("x", json!({"k": "v\u{0}"})), "/metadata/k"),
        (
            create("x", json!({"k": [{"deep": "\u{0}"}]})),
            "/metadata/k/0/deep",
        ),
    ] {
        let reply = a.send(Method::POST, "/v1/messages", Some(&body), &[]).await;
        let problem = reply.problem(422);
        assert_eq!(problem["errors"][0]["pointer"], json!(pointer), "{problem}");
        assert!(
            problem["errors"][0]["message"]
                .as_str()
                .unwrap()
                .contains("U+0000"),
            "{problem}"
        );
    }
    // A body as raw text: what `json!` cannot write.
    let post_raw = |body: String| {
        a.http
            .post(format!("{}/v1/messages", a.base))
            .bearer_auth(KEY_A)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    // A lone surrogate cannot become a string at all: 400, naming the field.
    let response = post_raw(format!(
        r#"{{"conversationId": "{conversation}", "senderId": "{sender}", "content": "\ud800"}}"#
    ))
    .await
    .unwrap();
    assert_eq!(response.status(), 400);
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["errors"][0]["pointer"], "/content", "{problem}");
    // The identifiers are UUIDs: a NUL makes them not one (422), in a path not one either (400).
    let reply = a
        .send(
            Method::POST,
            "/v1/messages",
            Some(&json!({"conversationId": "\u{0}", "senderId": sender, "content": "x"})),
            &[],
        )
        .await;
    reply.problem(422);
    a.get("/v1/messages/%00").await.problem(400);
    a.get("/v1/conversations/%00/messages").await.problem(400);
    a.get(&format!(
        "/v1/conversations/{conversation}/messages?cursor=%00"
    ))
    .await
    .problem(400);

    // An integer beyond 64 bits would come back as another number (a double): 422 where it is.
    let response = post_raw(format!(
        r#"{{"conversationId": "{conversation}", "senderId": "{sender}", "content": "x",
            "metadata": {{"ok": 18446744073709551615, "n": [123456789012345678901234567890]}}}}"#
    ))
    .await
    .unwrap();
    assert_eq!(response.status(), 422);
    let problem: Value = response.json().await.unwrap();
    assert_eq!(
        problem["errors"][0]["pointer"], "/metadata/n/0",
        "{problem}"
    );
    // Ids only in their hyphenated form, in a body (422) and in a path (400).
    let simple = conversation.simple().to_string();
    let reply = a
        .send(
            Method::POST,
            "/v1/messages",
            Some(&json!({"conversationId": simple, "senderId": sender, "content": "x"})),
            &[],
        )
        .await;
    assert_eq!(
        reply.problem(422)["errors"][0]["pointer"],
        "/conversationId",
        "{reply:?}"
    );
    a.get(&format!("/v1/conversations/{simple}/messages"))
        .await
        .problem(400);

    let id = a.create(conversation, "kept").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    for (patch, pointer) in [
        (json!({"content": "\u{0}"}), "/content"),
        (json!({"metadata": {"\u{0}": "v"}}), "/metadata/\u{0}"),
    ] {
        let reply = a.patch(&id, &patch, None).await;
        assert_eq!(
            reply.problem(422)["errors"][0]["pointer"],
            json!(pointer),
            "{reply:?}"
        );
    }
    let read = a.get(&format!("/v1/messages/{id}")).await;
    assert_eq!(read.body["content"], "kept");
    assert_eq!(read.body["version"], 1);
    let stored = setup.stored().await;
    assert_eq!(stored.len(), 1, "only the valid message: {stored:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authentication_is_required_and_decides_the_tenant() {
    let setup = Setup::new("api-auth").await;
    let server = Server::start(&setup).await;
    let anonymous = server.anonymous();
    let reply = anonymous
        .get(&format!("/v1/messages/{}", Uuid::new_v4()))
        .await;
    reply.problem(401);
    assert_eq!(reply.header("www-authenticate"), Some("Bearer"));
    let reply = server
        .client("not-a-key")
        .get(&format!("/v1/messages/{}", Uuid::new_v4()))
        .await;
    reply.problem(401);
    assert_eq!(
        reply.header("www-authenticate"),
        Some("Bearer error=\"invalid_token\"")
    );
    let reply = anonymous
        .send(
            Method::POST,
            "/v1/messages",
            Some(&json!({"conversationId": Uuid::new_v4(), "senderId": Uuid::new_v4(), "content": "x"})),
            &[("x-tenant-id", "tenant-a")],
        )
        .await;
    reply.problem(401);
    anonymous.get("/v1/search?q=x").await.problem(401);
    // Probes and tooling need no key; the metrics, which name tenants, are not on the API's
    // port but on a port of their own.
    for path in ["/live", "/ready", "/openapi.json"] {
        let response = reqwest::get(format!("{}{path}", server.base))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
    }
    let on_api = reqwest::get(format!("{}/metrics", server.base))
        .await
        .unwrap();
    assert_eq!(on_api.status(), StatusCode::NOT_FOUND);
    let scraped = reqwest::get(format!("{}/metrics", server.metrics))
        .await
        .unwrap();
    assert_eq!(scraped.status(), StatusCode::OK);
    assert!(setup.stored().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tenant_gets_404_everywhere_and_changes_nothing() {
    let setup = Setup::new("api-tenants").await;
    let server = Server::start(&setup).await;
    let (a, b) = (server.client(KEY_A), server.client(KEY_B));
    let conversation = Uuid::new_v4();
    let message = a.create(conversation, "tenant a only").await;
    let id = message["id"].as_str().unwrap();

    b.get(&format!("/v1/messages/{id}")).await.problem(404);
    b.patch(id, &json!({"content": "mine now"}), None)
        .await
        .problem(404);
    b.patch(id, &json!({"content": "mine now"}), Some("\"1\""))
        .await
        .problem(404);
    b.delete(id, None).await.problem(404);
    b.delete(id, Some("*")).await.problem(404);
    let page = b
        .get(&format!("/v1/conversations/{conversation}/messages"))
        .await;
    assert_eq!(page.status, StatusCode::OK);
    assert_eq!(page.body["items"], json!([]));
    // The 404 says nothing a missing message would not.
    let foreign = b.get(&format!("/v1/messages/{id}")).await;
    let missing = b.get(&format!("/v1/messages/{}", Uuid::new_v4())).await;
    assert_eq!(
        foreign.body["title"], missing.body["title"],
        "{foreign:?} {missing:?}"
    );

    let unchanged = a.get(&format!("/v1/messages/{id}")).await;
    assert_eq!(unchanged.body, message);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_creates_return_the_original_and_refuse_another_body() {
    let setup = Setup::new("api-idem").await;
    let server = Server::start(&setup).await;
    let (a, b) = (server.client(KEY_A), server.client(KEY_B));
    let body = json!({"conversationId": Uuid::new_v4(), "senderId": Uuid::new_v4(), "content": "once", "metadata": {"n": 1}});
    let key = [("idempotency-key", "order-42")];
    let first = a
        .send(Method::POST, "/v1/messages", Some(&body), &key)
        .await;
    assert_eq!(first.status, StatusCode::CREATED, "{first:?}");
    assert_eq!(first.header("idempotent-replayed"), None);
    let retry = a
        .send(Method::POST, "/v1/messages", Some(&body), &key)
        .await;
    assert_eq!(retry.status, StatusCode::CREATED, "{retry:?}");
    assert_eq!(retry.header("idempotent-replayed"), Some("true"));
    assert_eq!(retry.body, first.body);

    let mut other = body.clone();
    other["content"] = json!("twice?");
    let reused = a
        .send(Method::POST, "/v1/messages", Some(&other), &key)
        .await;
    assert!(
        reused.problem(422)["type"]
            .as_str()
            .unwrap()
            .ends_with("idempotency-key-reused")
    );
    // The same key is another message for another tenant.
    let theirs = b
        .send(Method::POST, "/v1/messages", Some(&body), &key)
        .await;
    assert_eq!(theirs.status, StatusCode::CREATED);
    assert_ne!(theirs.body["id"], first.body["id"]);

    let stored = setup.stored().await;
    assert_eq!(stored.len(), 2, "one message per tenant: {stored:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_are_written_together_and_each_gets_its_own_answer() {
    let setup = Setup::new("api-group").await;
    let server = Server::start(&setup).await;
    let a = server.client(KEY_A);
    let body = |i: usize, content: &str| json!({"conversationId": Uuid::from_u128(i as u128 % 7 + 1), "senderId": Uuid::new_v4(), "content": content, "metadata": {"i": i}});
    // Twenty messages made earlier, one at a time, each with its own Idempotency-Key.
    let mut originals = vec![];
    for i in 0..20 {
        let key = format!("earlier-{i}");
        let original = body(i, "earlier");
        let reply = a
            .send(
                Method::POST,
                "/v1/messages",
                Some(&original),
                &[("idempotency-key", &key)],
            )
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{reply:?}");
        originals.push((key, original, reply.body));
    }
    // At once (within the tenant's 64 in flight): 40 new messages, retries of the first ten with their body, and the other ten's
    // keys with another body. Each must get its own outcome, whatever batch it went in.
    let fresh = (0..40).map(|i| {
        let a = a.clone();
        async move {
            (
                "new",
                a.send(Method::POST, "/v1/messages", Some(&body(i, "fresh")), &[])
                    .await,
            )
        }
    });
    let retries = originals.iter().enumerate().map(|(i, (key, original, _))| {
        let (a, key) = (a.clone(), key.clone());
        let sent = if i < 10 {
            original.clone()
        } else {
            body(i, "another body")
        };
        async move {
            let kind = if i < 10 { "replay" } else { "reused" };
            (
                kind,
                a.send(
                    Method::POST,
                    "/v1/messages",
                    Some(&sent),
                    &[("idempotency-key", &key)],
                )
                .await,
            )
        }
    });
    let replies: Vec<(&str, common::Reply)> = futures::future::join_all(
        fresh
            .map(futures::future::Either::Left)
            .chain(retries.map(futures::future::Either::Right)),
    )
    .await;
    let mut new_ids = std::collections::HashSet::new();
    for (kind, reply) in &replies {
        match *kind {
            "new" => {
                assert_eq!(reply.status, StatusCode::CREATED, "{reply:?}");
                assert_eq!(reply.header("idempotent-replayed"), None, "{reply:?}");
                assert_eq!(reply.body["content"], json!("fresh"));
                assert!(new_ids.insert(reply.body["id"].clone()), "{reply:?}");
            }
            "replay" => {
                assert_eq!(reply.status, StatusCode::CREATED, "{reply:?}");
                assert_eq!(
                    reply.header("idempotent-replayed"),
                    Some("true"),
                    "{reply:?}"
                );
                assert!(
                    originals.iter().any(|(_, _, first)| *first == reply.body),
                    "{reply:?}"
                );
            }
            _ => assert!(
                reply.problem(422)["type"]
                    .as_str()
                    .unwrap()
                    .ends_with("idempotency-key-reused"),
                "{reply:?}"
            ),
        }
    }
    assert_eq!(new_ids.len(), 40);

    // MongoDB holds exactly the twenty and the forty, each at version 1.
    let stored = setup.stored().await;
    assert_eq!(stored.len(), 60, "{stored:?}");
    assert!(stored.values().all(|v| v.0 == 1), "{stored:?}");
    // The 60 concurrent inserts went in fewer commands than documents.
    let batches = common::metric(&server, "api_mongodb_insert_batch_size_count")
        .await
        .unwrap();
    let documents = common::metric(&server, "api_mongodb_insert_batch_size_sum")
        .await
        .unwrap();
    assert_eq!(
        documents, 80.0,
        "every create reached the group commit once"
    );
    assert!(
        batches < documents,
        "{batches} batches for {documents} documents"
    );
    // And the relay published each new message once, as version 1.
    let published = common::converged(&setup, std::time::Duration::from_secs(30)).await;
    assert_eq!(published, stored);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_if_match_is_412() {
    let setup = Setup::new("api-ifmatch").await;
    let server = Server::start(&setup).await;
    let a = server.client(KEY_A);
    let id = a.create(Uuid::new_v4(), "v1").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let ok = a.patch(&id, &json!({"content": "v2"}), Some("\"1\"")).await;
    assert_eq!(ok.status, StatusCode::OK);
    let stale = a
        .patch(&id, &json!({"content": "v2'"}), Some("\"1\""))
        .await;
    let problem = stale.problem(412);
    assert!(
        problem["detail"].as_str().unwrap().contains("\"2\""),
        "{problem}"
    );
    a.delete(&id, Some("\"1\"")).await.problem(412);
    a.delete(&id, Some("W/\"2\"")).await.problem(412);
    assert_eq!(
        a.get(&format!("/v1/messages/{id}")).await.body["content"],
        json!("v2")
    );
    assert_eq!(
        a.delete(&id, Some("\"1\", \"2\"")).await.status,
        StatusCode::NO_CONTENT
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_many_parallel_patches_with_one_if_match_exactly_one_wins() {
    let setup = Setup::new("api-race").await;
    let server = Server::start(&setup).await;
    let a = server.client(KEY_A);
    let id = a.create(Uuid::new_v4(), "start").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let attempts = 24;
    let replies = futures::future::join_all((0..attempts).map(|i| {
        let (a, id) = (a.clone(), id.clone());
        async move {
            a.patch(
                &id,
                &json!({"content": format!("writer {i}")}),
                Some("\"1\""),
            )
            .await
        }
    }))
    .await;
    let winners: Vec<&common::Reply> = replies
        .iter()
        .filter(|r| r.status == StatusCode::OK)
        .collect();
    assert_eq!(winners.len(), 1, "{replies:?}");
    for loser in replies.iter().filter(|r| r.status != StatusCode::OK) {
        loser.problem(412);
    }
    let now = a.get(&format!("/v1/messages/{id}")).await;
    assert_eq!(now.body["version"], json!(2));
    assert_eq!(now.body["content"], winners[0].body["content"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_metrics_and_health() {
    let setup = Setup::new("api-ops").await;
    let server = Server::start(&setup).await;
    let a = server.client(KEY_A);
    a.create(Uuid::new_v4(), "counted").await;
    let openapi: Value = reqwest::get(format!("{}/openapi.json", server.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let paths = openapi["paths"].as_object().unwrap();
    for path in [
        "/v1/messages",
        "/v1/messages/{id}",
        "/v1/conversations/{conversationId}/messages",
        "/v1/search",
    ] {
        assert!(paths.contains_key(path), "{path} in {:?}", paths.keys());
    }
    assert!(paths["/v1/messages/{id}"]["patch"].is_object());
    assert_eq!(
        openapi["components"]["securitySchemes"]["bearer"]["scheme"],
        json!("bearer")
    );
    assert!(openapi["components"]["schemas"]["Problem"].is_object());

    let metrics = reqwest::get(format!("{}/metrics", server.metrics))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(
            r#"api_http_requests_total{method="POST",route="/v1/messages",status="201"} 1"#
        ),
        "{metrics}"
    );
    assert!(metrics.contains("api_relay_lag_seconds"), "{metrics}");
    assert_eq!(
        reqwest::get(format!("{}/live", server.base))
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "ok"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_insecure_demo_mode_takes_the_tenant_from_a_header_and_says_so() {
    let setup = Setup::new("api-insecure").await;
    let server = Server::start_with(&setup, &[("API_INSECURE_TENANT_HEADER", "true")]).await;
    let anonymous = server.anonymous();
    let body =
        json!({"conversationId": Uuid::new_v4(), "senderId": Uuid::new_v4(), "content": "demo"});
    let created = anonymous
        .send(
            Method::POST,
            "/v1/messages",
            Some(&body),
            &[("x-tenant-id", "demo-a")],
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
    let path = format!("/v1/messages/{}", created.body["id"].as_str().unwrap());
    let own = anonymous
        .send(Method::GET, &path, None, &[("x-tenant-id", "demo-a")])
        .await;
    assert_eq!(own.status, StatusCode::OK);
    anonymous
        .send(Method::GET, &path, None, &[("x-tenant-id", "demo-b")])
        .await
        .problem(404);
    anonymous.get(&path).await.problem(400);
    let log = std::fs::read_to_string(&server.log).unwrap();
    assert!(log.contains("AUTHENTICATION IS OFF"), "{log}");
}

/// `/ready` is unauthenticated and on the API's port: a flood of it must not put a MongoDB ping
/// on every call (each one a pooled connection tenants' requests wait for). It answers from a
/// probe that pings once a second, and tenants writing meanwhile are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_of_ready_calls_costs_mongodb_one_ping_a_second_and_tenants_are_served() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let setup = Setup::new("api-ready-flood").await;
    let server = Server::start(&setup).await;
    let pings = || common::metric(&server, "api_mongodb_pings_total");
    let before = pings().await.expect("the ping counter");
    let started = std::time::Instant::now();
    let (stop, calls) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
    );
    let flood: Vec<_> = (0..32)
        .map(|_| {
            let (stop, calls) = (Arc::clone(&stop), Arc::clone(&calls));
            let url = format!("{}/ready", server.base);
            tokio::spawn(async move {
                let http = reqwest::Client::new();
                while !stop.load(Ordering::Relaxed) {
                    let answer = http.get(&url).send().await.unwrap();
                    assert_eq!(answer.status(), StatusCode::OK);
                    calls.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let tenant = server.client(KEY_A);
    for n in 0..50 {
        tenant
            .create(Uuid::new_v4(), &format!("during the flood {n}"))
            .await;
    }
    stop.store(true, Ordering::Relaxed);
    for f in flood {
        f.await.unwrap();
    }
    let seconds = started.elapsed().as_secs_f64();
    let pinged = pings().await.unwrap() - before;
    let calls = calls.load(Ordering::Relaxed);
    assert!(calls >= 200, "the flood ran: {calls} calls");
    assert!(
        pinged <= seconds.ceil() + 2.0,
        "{pinged} MongoDB pings for {calls} /ready calls in {seconds:.1} s"
    );
    assert_eq!(setup.stored().await.len(), 50, "every tenant create served");
}

/// Replicas start together on a database no one used yet (a new pipeline's first rollout): each
/// makes the messages collection's indexes at once. None may fail on the other's: a failure there
/// ends the process, and its pod restarts at install (seen once on FerretDB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_opening_a_new_database_together_all_open_it() {
    use api_server::store::Store;
    use pipeline_contract::mongodb_client::MongoArgs;
    for round in 0..10 {
        let args = MongoArgs {
            mongodb_uri: e2e::rig::rig().mongodb_uri().to_owned(),
            mongodb_ca_file: None,
            mongodb_database: e2e::unique("api_open_together").replace('-', "_"),
            mongodb_collection: "messages".to_owned(),
        };
        let open = || async { Store::open(&args).await };
        let (a, b, c) = tokio::join!(open(), open(), open());
        for (replica, opened) in [a, b, c].into_iter().enumerate() {
            if let Err(error) = opened {
                panic!("round {round}: replica {replica} failed to open the store: {error}");
            }
        }
    }
}

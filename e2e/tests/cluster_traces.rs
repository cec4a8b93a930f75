//! One trace from the client's request to the search engine, read back from the rig's collector
//! (Jaeger, through its query API): a pipeline with `spec.tracing` on the rig's node, a create,
//! an update and a delete through the API, each with a client `traceparent` of a trace of its
//! own. Each trace holds the api-server's request span (a child of the client's span), its
//! MongoDB write, the relay's publish and the indexer's consume span, in causal order, with the
//! message id, tenant and Kafka position as attributes and no content; and the indexer's bulk
//! span, a trace of its own, links to the consume span.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use e2e::cluster::{self, Install};
use e2e::rig::rig;
use e2e::wait;
use serde_json::{Value, json};
use uuid::Uuid;

const READY_WITHIN: Duration = Duration::from_secs(240);
/// The workers' batch span processor exports every 5 s; the indexer's bulk follows its commit.
const EXPORTED_WITHIN: Duration = Duration::from_secs(90);

/// A span of Jaeger's OTLP JSON answer, flattened with its service.
#[derive(Debug, Clone)]
struct Span {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent: String,
    start: u128,
    end: u128,
    attributes: HashMap<String, String>,
    links: Vec<(String, String)>,
}

/// An OTLP JSON id: lower-case hex (as Jaeger writes it), or base64 of the bytes (as the
/// protobuf JSON mapping would).
fn hex_id(v: &Value) -> String {
    let s = v.as_str().unwrap_or_default();
    let is_hex = (s.len() == 16 || s.len() == 32) && s.bytes().all(|b| b.is_ascii_hexdigit());
    if is_hex || s.is_empty() {
        return s.to_ascii_lowercase();
    }
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(s)
        .unwrap_or_else(|e| panic!("id {s:?} is neither hex nor base64: {e}"));
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn any_value(v: &Value) -> String {
    for key in ["stringValue", "intValue", "boolValue", "doubleValue"] {
        if let Some(x) = v.get(key) {
            return match x {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
        }
    }
    v.to_string()
}

fn attributes(list: &Value) -> HashMap<String, String> {
    list.as_array()
        .into_iter()
        .flatten()
        .map(|kv| {
            (
                kv["key"].as_str().unwrap_or_default().to_owned(),
                any_value(&kv["value"]),
            )
        })
        .collect()
}

fn nanos(v: &Value) -> u128 {
    match v {
        Value::String(s) => s.parse().unwrap_or_default(),
        other => other.as_u64().map(u128::from).unwrap_or_default(),
    }
}

/// Every span of an answer of `/api/v3/traces…` (`{"result": {"resourceSpans": […]}}`).
fn spans(answer: &Value) -> Vec<Span> {
    let mut out = Vec::new();
    let resource_spans = answer["result"]["resourceSpans"].as_array();
    for rs in resource_spans.into_iter().flatten() {
        let service = attributes(&rs["resource"]["attributes"])
            .remove("service.name")
            .unwrap_or_default();
        for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
            for s in ss["spans"].as_array().into_iter().flatten() {
                out.push(Span {
                    service: service.clone(),
                    name: s["name"].as_str().unwrap_or_default().to_owned(),
                    trace_id: hex_id(&s["traceId"]),
                    span_id: hex_id(&s["spanId"]),
                    parent: hex_id(&s["parentSpanId"]),
                    start: nanos(&s["startTimeUnixNano"]),
                    end: nanos(&s["endTimeUnixNano"]),
                    attributes: attributes(&s["attributes"]),
                    links: s["links"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|l| (hex_id(&l["traceId"]), hex_id(&l["spanId"])))
                        .collect(),
                });
            }
        }
    }
    out
}

/// The trace's spans as the collector has them, and its raw JSON; `None` while it has none.
async fn trace(http: &reqwest::Client, trace_id: &str) -> Option<(Vec<Span>, String)> {
    let url = format!("{}/api/v3/traces/{trace_id}", rig().jaeger_query_url());
    let answer = http.get(url).send().await.ok()?;
    if !answer.status().is_success() {
        return None;
    }
    let text = answer.text().await.ok()?;
    let value: Value = serde_json::from_str(&text).ok()?;
    let found = spans(&value);
    (!found.is_empty()).then_some((found, text))
}

fn rfc3339(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// The indexer's bulk spans that started in `[from, to]`.
async fn bulk_spans(http: &reqwest::Client, from: SystemTime, to: SystemTime) -> Vec<Span> {
    let answer = http
        .get(format!("{}/api/v3/traces", rig().jaeger_query_url()))
        .query(&[
            ("query.service_name", "indexer"),
            ("query.operation_name", "bulk"),
            ("query.start_time_min", &rfc3339(from)),
            ("query.start_time_max", &rfc3339(to)),
            ("query.num_traces", "1000"),
        ])
        .send()
        .await;
    let Ok(answer) = answer else {
        return Vec::new();
    };
    if !answer.status().is_success() {
        return Vec::new();
    }
    answer
        .json::<Value>()
        .await
        .map(|v| spans(&v))
        .unwrap_or_default()
}

fn one<'a>(spans: &'a [Span], what: &str, pick: impl Fn(&Span) -> bool) -> &'a Span {
    let found: Vec<&Span> = spans.iter().filter(|s| pick(s)).collect();
    assert_eq!(found.len(), 1, "exactly one {what} span in {spans:#?}");
    found[0]
}

/// Whether the trace holds a span of each hop yet (what they must be is [`check_chain`]'s).
fn every_hop(spans: &[Span], client_span: &str, db_op: &str) -> bool {
    let has = |pick: &dyn Fn(&Span) -> bool| spans.iter().any(pick);
    has(&|s| s.service == "api-server" && s.parent == client_span)
        && has(&|s| s.service == "api-server" && s.name == format!("mongodb {db_op}"))
        && has(&|s| s.service == "api-server" && s.name.ends_with(" publish"))
        && has(&|s| s.service == "indexer" && s.name.ends_with(" process"))
}

/// What one request's trace must hold; returns the consume span's id.
fn check_chain(spans: &[Span], client_span: &str, id: &str, db_op: &str) -> String {
    let server = one(spans, "api-server request", |s| {
        s.service == "api-server" && s.parent == client_span
    });
    assert_eq!(
        server.attributes.get("tenant").map(String::as_str),
        Some(cluster::TENANT)
    );
    let mongodb = one(spans, &format!("mongodb {db_op}"), |s| {
        s.service == "api-server" && s.name == format!("mongodb {db_op}")
    });
    assert_eq!(
        mongodb.parent, server.span_id,
        "the write is the request's child"
    );
    assert_eq!(
        mongodb.attributes.get("message.id").map(String::as_str),
        Some(id)
    );
    let publish = one(spans, "publish", |s| {
        s.service == "api-server" && s.name.ends_with(" publish")
    });
    assert_eq!(
        publish.parent, server.span_id,
        "the publish is the request's child"
    );
    assert_eq!(
        publish.attributes.get("message.id").map(String::as_str),
        Some(id)
    );
    assert_eq!(
        publish.attributes.get("recovered").map(String::as_str),
        Some("false")
    );
    assert!(
        publish.attributes.contains_key("messaging.kafka.offset"),
        "{publish:?}"
    );
    let consume = one(spans, "consume", |s| {
        s.service == "indexer" && s.name.ends_with(" process")
    });
    assert_eq!(
        consume.parent, publish.span_id,
        "the consume span is the record's child"
    );
    assert_eq!(
        consume.attributes.get("message.id").map(String::as_str),
        Some(id)
    );
    assert_eq!(
        consume.attributes.get("messaging.kafka.offset"),
        publish.attributes.get("messaging.kafka.offset"),
        "the record the relay published is the one consumed"
    );
    assert_eq!(
        consume.attributes.get("messaging.destination.partition.id"),
        publish.attributes.get("messaging.destination.partition.id"),
    );
    // Causal order on the one clock of this machine.
    assert!(
        server.start <= mongodb.start && mongodb.end <= server.end,
        "{server:?} {mongodb:?}"
    );
    assert!(
        mongodb.end <= publish.start,
        "published after the write: {mongodb:?} {publish:?}"
    );
    assert!(
        publish.start <= consume.start,
        "consumed after publishing: {publish:?} {consume:?}"
    );
    consume.span_id.clone()
}

async fn send(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    traceparent: &str,
    body: Option<Value>,
) -> Value {
    let mut request = http
        .request(method, url)
        .bearer_auth(cluster::KEY)
        .header("traceparent", traceparent);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let answer = request.send().await.unwrap();
    let status = answer.status();
    let text = answer.text().await.unwrap();
    assert!(status.is_success(), "{status}: {text}");
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn create_update_delete_each_make_one_trace_from_the_client_to_the_index() {
    let collector = rig().otel_collector_url().to_owned();
    let install = Install::new("traces").await;
    let pipeline = install
        .ready_pipeline(
            "chat",
            rig().pod_endpoints().search_url,
            json!({
                "api": {"replicas": 1},
                "indexer": {"replicas": 1},
                "tracing": {"endpoint": collector},
            }),
            (1, 1),
            READY_WITHIN,
        )
        .await;
    let base = pipeline.api_base(&install).await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let started = SystemTime::now();
    let secret = format!("never-in-a-span-{}", Uuid::new_v4().simple());
    let client_span = |_: &str| format!("{:016x}", fastrand::u64(1..));
    let mut requests = Vec::new();

    let (trace_id, span) = (Uuid::new_v4().simple().to_string(), client_span("create"));
    let created = send(
        &http,
        reqwest::Method::POST,
        format!("{base}/v1/messages"),
        &format!("00-{trace_id}-{span}-01"),
        Some(json!({"conversationId": Uuid::new_v4(), "senderId": Uuid::new_v4(), "content": secret, "metadata": {"note": secret}})),
    )
    .await;
    let id = created["id"].as_str().unwrap().to_owned();
    requests.push((trace_id, span, "insert"));
    for (method, body, op) in [
        (
            reqwest::Method::PATCH,
            Some(json!({"content": format!("{secret} edited")})),
            "update",
        ),
        (reqwest::Method::DELETE, None, "update"),
    ] {
        let (trace_id, span) = (Uuid::new_v4().simple().to_string(), client_span(op));
        send(
            &http,
            method,
            format!("{base}/v1/messages/{id}"),
            &format!("00-{trace_id}-{span}-01"),
            body,
        )
        .await;
        requests.push((trace_id, span, op));
    }

    for (trace_id, client, op) in &requests {
        let (spans, raw) = wait::until(
            &format!("trace {trace_id} with a span of each hop"),
            EXPORTED_WITHIN,
            || async {
                // Each process exports on its own schedule: wait until every hop's span is in.
                trace(&http, trace_id)
                    .await
                    .filter(|(spans, _)| every_hop(spans, client, op))
            },
        )
        .await;
        assert!(
            !raw.contains(&secret),
            "content or metadata in a span of trace {trace_id}: {raw}"
        );
        let consume = check_chain(&spans, client, &id, op);
        let bulk = wait::until(
            &format!("the bulk span linked to trace {trace_id}"),
            EXPORTED_WITHIN,
            || async {
                bulk_spans(&http, started, SystemTime::now())
                    .await
                    .into_iter()
                    .find(|b| b.links.contains(&(trace_id.clone(), consume.clone())))
            },
        )
        .await;
        assert_ne!(
            &bulk.trace_id, trace_id,
            "a bulk request is a trace of its own"
        );
        assert_eq!(
            bulk.attributes.get("bulk.outcome").map(String::as_str),
            Some("done"),
            "{bulk:?}"
        );
        let consumed = spans.iter().find(|s| s.span_id == consume).unwrap();
        assert!(consumed.start <= bulk.start, "{consumed:?} {bulk:?}");
        eprintln!(
            "trace {trace_id} ({op}): {} spans, bulk {} of {} items",
            spans.len(),
            bulk.span_id,
            bulk.attributes
                .get("bulk.items")
                .map_or("?", String::as_str)
        );
    }
    install.remove().await;
}

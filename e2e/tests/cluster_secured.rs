//! The product on the rig's secured endpoints only (SASL_SSL Kafka, the TLS FerretDB, the HTTPS
//! search engine, each with a certificate from the rig's CA), installed as users install it (the
//! operator from its chart, workers as pods of the image `make image` imported), each worker as
//! its own least-privilege principal through Secrets that hold only credentials and the CA: the
//! pipeline becomes Ready, create, update, delete and search work through its Service, a poison
//! event reaches the DLQ, the index equals MongoDB (both read as the audit principal), a bad
//! credential given to the workers only reaches the resource through their Leases, and no log
//! holds a password. A file of its own: e2e/kind runs cluster.rs against servers without these
//! listeners.

use std::time::Duration;

use e2e::cluster::{self, Install, condition, ready_with};
use e2e::{kafka, rig::rig, wait};
use k8s_openapi::api::core::v1::Pod;
use serde_json::json;

/// From applying the pipeline to Ready=True: 2 worker pods of debug builds on a shared node.
const READY_WITHIN: Duration = Duration::from_secs(240);
/// The next minute's audit: the CronJob's tick, the pod starting, the audit.
const AUDITED_WITHIN: Duration = Duration::from_secs(180);
/// For the index (and the DLQ depth) to catch up.
const CONVERGE_WITHIN: Duration = Duration::from_secs(120);

/// Secrets of the secured scenario: a principal per part (`<service>-<principal>` with
/// `username`/`password`), the rig's CA, and the api-server's MongoDB URI (TLS, PLAIN login).
async fn secured_secrets(install: &Install) {
    use k8s_openapi::api::core::v1::Secret;
    use kube::api::{Patch, PatchParams};
    let ca = std::fs::read_to_string(rig().ca_cert()).unwrap();
    let mongodb = |principal: &str| {
        format!(
            "mongodb://mp-{principal}:{}@{}/?tls=true&authMechanism=PLAIN",
            rig().mongodb_password(principal),
            rig()
                .secure_pod_endpoints()
                .mongodb_uri
                .trim_start_matches("mongodb://")
                .trim_end_matches('/'),
        )
    };
    let mut secrets = vec![
        ("rig-ca".to_owned(), json!({"ca.crt": ca})),
        ("mongodb-secure".to_owned(), json!({"uri": mongodb("api")})),
        // The rebuild and audit Jobs read MongoDB as the read-only principal.
        (
            "mongodb-reader".to_owned(),
            json!({"uri": mongodb("audit")}),
        ),
    ];
    for principal in ["operator", "api", "indexer"] {
        let user = format!("mp-{principal}");
        secrets.push((
            format!("kafka-{principal}"),
            json!({"username": user, "password": rig().kafka_password(principal)}),
        ));
        secrets.push((
            format!("search-{principal}"),
            json!({"username": user, "password": rig().search_password(principal)}),
        ));
    }
    let api = install.api::<Secret>();
    for (name, data) in secrets {
        let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "stringData": data});
        api.patch(
            &name,
            &PatchParams::apply("cluster-e2e").force(),
            &Patch::Apply(&secret),
        )
        .await
        .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_the_secured_endpoints_only_each_worker_as_its_own_principal_the_pipeline_works() {
    use pipeline_contract::search_client::SearchAccess;
    let install = Install::new("cluster-secure").await;
    secured_secrets(&install).await;
    let endpoints = rig().secure_pod_endpoints();
    let id = e2e::unique("c");
    let (topic, dlq, alias) = (
        format!("secure-events-{id}"),
        format!("secure-dlq-{id}"),
        format!("secure-messages-{id}"),
    );
    let credentials = |name: &str| json!({"name": name});
    let ca = json!({"name": "rig-ca", "key": "ca.crt"});
    let mut pipeline = install
        .apply_pipeline(
            "secure",
            endpoints.search_url,
            json!({
                "api": {"replicas": 1},
                "indexer": {"replicas": 1},
                "mongodb": {
                    "uriSecretRef": {"name": "mongodb-secure", "key": "uri"},
                    "readerUriSecretRef": {"name": "mongodb-reader", "key": "uri"},
                    "caSecretRef": ca,
                },
                "audit": {"schedule": "* * * * *"},
                "kafka": {
                    "bootstrapServers": endpoints.kafka,
                    "topic": {"name": topic},
                    "dlq": {"name": dlq},
                    "consumerGroup": format!("secure-{id}"),
                    "tls": {"caSecretRef": ca},
                    "sasl": {
                        "mechanism": "SCRAM-SHA-512",
                        "credentialsSecretRef": credentials("kafka-operator"),
                        "apiCredentialsSecretRef": credentials("kafka-api"),
                        "indexerCredentialsSecretRef": credentials("kafka-indexer"),
                    },
                },
                "elasticsearch": {
                    "alias": alias,
                    "credentialsSecretRef": credentials("search-operator"),
                    "apiCredentialsSecretRef": credentials("search-api"),
                    "indexerCredentialsSecretRef": credentials("search-indexer"),
                    "caSecretRef": ca,
                },
            }),
        )
        .await;
    pipeline.topic = topic.clone();
    pipeline.alias = alias.clone();
    let mp = pipeline
        .until(
            &install,
            "Ready=True with 1/1 and 1/1",
            READY_WITHIN,
            |mp| ready_with(mp, 1, 1),
        )
        .await;
    assert_eq!(condition(&mp, "TopicsReady"), Some("True"));

    // Create, update, delete and search through the Service.
    let base = pipeline.api_base(&install).await;
    let http = reqwest::Client::new();
    let auth = format!("Bearer {}", cluster::KEY);
    let conversation = uuid::Uuid::new_v4();
    let create = |content: &'static str| {
        let request = http
            .post(format!("{base}/v1/messages"))
            .header("authorization", &auth)
            .json(&json!({"conversationId": conversation, "senderId": uuid::Uuid::new_v4(), "content": content}));
        async move {
            let created: serde_json::Value = request.send().await.unwrap().json().await.unwrap();
            created["id"].as_str().expect("created").to_owned()
        }
    };
    let kept = create("kept over TLS").await;
    let gone = create("deleted soon").await;
    let patched = http
        .patch(format!("{base}/v1/messages/{kept}"))
        .header("authorization", &auth)
        .json(&json!({"content": "changed over TLS"}))
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status(), 200);
    let deleted = http
        .delete(format!("{base}/v1/messages/{gone}"))
        .header("authorization", &auth)
        .send()
        .await
        .unwrap();
    assert!(deleted.status().is_success(), "{}", deleted.status());
    wait::until(
        "the changed message found by search",
        CONVERGE_WITHIN,
        || async {
            let found: serde_json::Value = http
                .get(format!("{base}/v1/search?q=changed"))
                .header("authorization", &auth)
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            let ids: Vec<&str> = found["items"]
                .as_array()?
                .iter()
                .filter_map(|m| m["id"].as_str())
                .collect();
            (ids == [kept.as_str()]).then_some(())
        },
    )
    .await;

    // A poison event reaches the DLQ through the indexer's principal; the operator's reads it.
    let producer = kafka::producer();
    producer
        .send(
            rdkafka::producer::FutureRecord::to(&topic)
                .key(&conversation.to_string())
                .payload("not an event"),
            Duration::from_secs(10),
        )
        .await
        .expect("a poison record on the events topic");
    pipeline
        .until(
            &install,
            "DLQ depth 1 on the resource",
            CONVERGE_WITHIN,
            |mp| mp.status.as_ref().and_then(|s| s.dlq_depth) == Some(1),
        )
        .await;

    // The index equals MongoDB, both read as the read-only audit principal.
    let mongodb = rig().mongodb_secure_uri(
        Some(("audit", rig().mongodb_password("audit"))),
        Some(rig().ca_cert()),
    );
    let audit = SearchAccess {
        search_username: Some("mp-audit".into()),
        search_password: Some(rig().search_password("audit").into()),
        search_ca_cert: Some(rig().ca_cert().into()),
    };
    let search_http = audit.http_client(Duration::from_secs(10)).unwrap();
    let search = audit.endpoint(rig().search_secure_url());
    let stored = e2e::state::stored_at(&mongodb, &pipeline.database).await;
    assert_eq!(stored.len(), 2, "{stored:?}");
    wait::until("the index equals MongoDB", CONVERGE_WITHIN, || async {
        let indexed = e2e::state::indexed_at(&search_http, &search, &alias).await?;
        (indexed == stored).then_some(())
    })
    .await;

    // The audit CronJob's pod, as the indexer's Kafka and search principals and MongoDB's
    // reader, over TLS, finds the same.
    let equal_at = k8s_openapi::jiff::Timestamp::now();
    let audited = pipeline
        .until(
            &install,
            "an audit that started after the index equalled MongoDB",
            AUDITED_WITHIN,
            |mp| {
                mp.status
                    .as_ref()
                    .and_then(|s| s.audit.as_ref())
                    .and_then(|a| a.start_time.parse::<k8s_openapi::jiff::Timestamp>().ok())
                    .is_some_and(|t| t > equal_at)
            },
        )
        .await;
    let audit = audited.status.as_ref().unwrap().audit.as_ref().unwrap();
    assert_eq!(
        (audit.outcome.as_str(), audit.mongodb_documents),
        ("InSync", 2),
        "{audit:?}"
    );
    assert_eq!(cluster::reason(&audited, "IndexInSync"), Some("InSync"));

    // A bad credential given to the workers only (the operator's stay good) reaches the
    // resource through their Leases: the rolled-out pods are refused, the old ones keep serving.
    let bad = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "bad"},
    "stringData": {
        "username": "mp-indexer", "password": "not-the-password",
        "uri": format!("mongodb://mp-api:not-the-password@{}/?tls=true&authMechanism=PLAIN",
            endpoints.mongodb_uri.trim_start_matches("mongodb://").trim_end_matches('/')),
    }});
    install
        .api::<k8s_openapi::api::core::v1::Secret>()
        .patch(
            "bad",
            &kube::api::PatchParams::apply("cluster-e2e").force(),
            &kube::api::Patch::Apply(&bad),
        )
        .await
        .unwrap();
    install
        .change_spec("secure", |spec| {
            spec["mongodb"]["uriSecretRef"] = json!({"name": "bad", "key": "uri"});
            spec["kafka"]["sasl"]["indexerCredentialsSecretRef"] = json!({"name": "bad"});
        })
        .await;
    let refused = pipeline
        .until(
            &install,
            "ApiServerAvailable MongoDBAuthenticationFailed and IndexerAvailable KafkaAuthenticationFailed",
            READY_WITHIN,
            |mp| {
                cluster::reason(mp, "ApiServerAvailable") == Some("MongoDBAuthenticationFailed")
                    && cluster::reason(mp, "IndexerAvailable")
                        == Some("KafkaAuthenticationFailed")
            },
        )
        .await;
    assert_eq!(condition(&refused, "Ready"), Some("False"));

    // No password in any log: the operator's, the workers' (the refused ones included).
    let passwords: Vec<&str> = ["operator", "api", "indexer"]
        .into_iter()
        .flat_map(|p| [rig().kafka_password(p), rig().search_password(p)])
        .chain([
            rig().mongodb_password("api"),
            rig().mongodb_password("audit"),
            "not-the-password",
        ])
        .collect();
    let mut pods = install.operator_pods().await;
    pods.extend(pipeline.worker_pods(&install).await);
    let api = install.api::<Pod>();
    let mut read = 0;
    for pod in pods {
        let name = pod.metadata.name.unwrap();
        // A pod whose container has not started yet has no log to read.
        let log = api
            .logs(&name, &kube::api::LogParams::default())
            .await
            .unwrap_or_default();
        read += usize::from(!log.is_empty());
        for password in &passwords {
            assert!(!log.contains(password), "a password in the log of {name}");
        }
    }
    assert!(read >= 3, "only {read} logs read");
    install.remove().await;
}

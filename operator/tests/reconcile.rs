//! The operator against the rig's real API server, Kafka and OpenSearch: children with owner
//! references, topics and the index layout as the spec says, convergence, drift reverted, CEL
//! refusals, conflicts, status from Deployments and Leases, lag, deletion policies, pause.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{Env, condition, is};
use e2e::{rig::rig, wait};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Resource, ResourceExt};
use messagepipeline_crd::MessagePipeline;
use pipeline_contract::search::IndexLayout;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, AlterConfig, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{Value, json};

fn admin() -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", rig().kafka())
        .create()
        .unwrap()
}

/// (partitions, dynamic settings) of a topic, `None` when it does not exist.
async fn topic(name: &str) -> Option<(usize, BTreeMap<String, String>)> {
    let admin = admin();
    let metadata = admin
        .inner()
        .fetch_metadata(Some(name), Duration::from_secs(10))
        .unwrap();
    let t = &metadata.topics()[0];
    if t.error().is_some() || t.partitions().is_empty() {
        return None;
    }
    let partitions = t.partitions().len();
    let described = admin
        .describe_configs([&ResourceSpecifier::Topic(name)], &AdminOptions::new())
        .await
        .unwrap();
    let mut settings = BTreeMap::new();
    for r in described {
        for e in r.unwrap().entries {
            if matches!(e.source, rdkafka::admin::ConfigSource::DynamicTopic) {
                settings.insert(e.name, e.value.unwrap_or_default());
            }
        }
    }
    Some((partitions, settings))
}

async fn search(method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut r = reqwest::Client::new().request(method, format!("{}{path}", rig().search_url()));
    if let Some(b) = body {
        r = r.json(&b);
    }
    let response = r.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn spec_str(
    mp: &MessagePipeline,
    f: impl Fn(&messagepipeline_crd::MessagePipelineSpec) -> String,
) -> String {
    f(&mp.spec)
}

/// resourceVersions of every child.
/// What the operator's writes change: the resourceVersion of children nothing else writes, and
/// the generation (spec changes only) of those whose status the rig's controllers keep up to
/// date (Deployments, PodDisruptionBudgets).
async fn child_versions(env: &Env, name: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let worker = format!("{name}-worker");
    out.insert(
        "sa".into(),
        env.api::<ServiceAccount>()
            .get(&worker)
            .await
            .unwrap()
            .resource_version()
            .unwrap(),
    );
    out.insert(
        "role".into(),
        env.api::<Role>()
            .get(&worker)
            .await
            .unwrap()
            .resource_version()
            .unwrap(),
    );
    out.insert(
        "rb".into(),
        env.api::<RoleBinding>()
            .get(&worker)
            .await
            .unwrap()
            .resource_version()
            .unwrap(),
    );
    for role in ["api", "indexer"] {
        let n = format!("{name}-{role}");
        out.insert(
            format!("deploy-{role}"),
            env.api::<Deployment>()
                .get(&n)
                .await
                .unwrap()
                .metadata
                .generation
                .unwrap()
                .to_string(),
        );
        out.insert(
            format!("svc-{role}"),
            env.api::<Service>()
                .get(&n)
                .await
                .unwrap()
                .resource_version()
                .unwrap(),
        );
        out.insert(
            format!("pdb-{role}"),
            env.api::<PodDisruptionBudget>()
                .get(&n)
                .await
                .unwrap()
                .metadata
                .generation
                .unwrap()
                .to_string(),
        );
    }
    out
}

/// Makes the controller look again (an annotation change is an event on the resource) and waits
/// until it has.
async fn nudge(env: &Env, name: &str) {
    let before = env.reconciles();
    env.api::<MessagePipeline>()
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"annotations": {"tests/nudge": Timestamp::now().to_string()}}}),
            ),
        )
        .await
        .unwrap();
    wait::until(
        "a reconcile after the nudge",
        Duration::from_secs(30),
        || async { (env.reconciles() > before).then_some(()) },
    )
    .await;
}

async fn template_ready(env: &Env, name: &str) -> MessagePipeline {
    env.until(name, "topics and index template ready", |mp| {
        is(mp, "TopicsReady", "True") && is(mp, "IndexTemplateReady", "True")
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applying_a_pipeline_creates_everything_and_a_second_reconcile_changes_nothing() {
    let env = Env::new("op-apply").await;
    // The example as shipped, pointed at the rig: one broker (replication 1), one search node
    // (0 replicas), and names unique to this test.
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/minimal.yaml"
    ))
    .unwrap();
    let example: Value = serde_saphyr::from_str(&text).unwrap();
    let mut spec = example["spec"].clone();
    let rig_spec = env.spec(json!({}));
    spec["kafka"]["bootstrapServers"] = rig_spec["kafka"]["bootstrapServers"].clone();
    spec["kafka"]["topic"] = rig_spec["kafka"]["topic"].clone();
    spec["kafka"]["dlq"] = rig_spec["kafka"]["dlq"].clone();
    spec["kafka"]["consumerGroup"] = rig_spec["kafka"]["consumerGroup"].clone();
    spec["elasticsearch"] = rig_spec["elasticsearch"].clone();
    // No pods (the example's image is not on the rig's node).
    spec["api"]["replicas"] = json!(0);
    spec["indexer"]["replicas"] = json!(0);
    // The example's Secrets, by the names it references.
    for (name, key) in [
        (&spec["api"]["auth"]["apiKeysSecretRef"], "keys.yaml"),
        (&spec["mongodb"]["uriSecretRef"], "uri"),
    ] {
        let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(json!({
            "metadata": {"name": name["name"]}, "stringData": {name["key"].as_str().unwrap_or(key): "unused"}}))
        .unwrap();
        env.api::<k8s_openapi::api::core::v1::Secret>()
            .create(&PostParams::default(), &secret)
            .await
            .unwrap();
    }
    env.create("orders", spec).await;
    let mp = template_ready(&env, "orders").await;
    let uid = mp.uid().unwrap();

    // Children, each owned by the pipeline.
    let owned = |m: &ObjectMeta| {
        m.owner_references
            .as_ref()
            .is_some_and(|o| o.iter().any(|o| o.uid == uid && o.controller == Some(true)))
    };
    for role in ["api", "indexer"] {
        let n = format!("orders-{role}");
        assert!(
            owned(&env.api::<Deployment>().get(&n).await.unwrap().metadata),
            "{n}"
        );
        assert!(
            owned(&env.api::<Service>().get(&n).await.unwrap().metadata),
            "{n}"
        );
        assert!(
            owned(
                &env.api::<PodDisruptionBudget>()
                    .get(&n)
                    .await
                    .unwrap()
                    .metadata
            ),
            "{n}"
        );
    }
    assert!(owned(
        &env.api::<ServiceAccount>()
            .get("orders-worker")
            .await
            .unwrap()
            .metadata
    ));
    assert!(owned(
        &env.api::<Role>()
            .get("orders-worker")
            .await
            .unwrap()
            .metadata
    ));
    assert!(owned(
        &env.api::<RoleBinding>()
            .get("orders-worker")
            .await
            .unwrap()
            .metadata
    ));

    // Topics with the requested partitions and retention, read back from Kafka.
    let name = spec_str(&mp, |s| s.kafka.topic.name.clone());
    let (partitions, settings) = topic(&name).await.expect("events topic");
    assert_eq!(partitions, 3);
    assert_eq!(settings["retention.ms"], "3600000");
    let (dlq_partitions, dlq_settings) = topic(&format!("{name}.dlq")).await.expect("DLQ");
    assert_eq!(
        (dlq_partitions, dlq_settings["retention.ms"].as_str()),
        (1, "7200000")
    );

    // Template, first index and alias, read back from the search engine.
    let alias = spec_str(&mp, |s| s.elasticsearch.alias.clone());
    let (status, _) = search(
        reqwest::Method::GET,
        &format!("/_index_template/{alias}-template"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let (status, body) = search(reqwest::Method::GET, &format!("/_alias/{alias}"), None).await;
    assert_eq!(status, 200);
    assert!(body.get(format!("{alias}-000001")).is_some(), "{body}");

    // Status: the Deployments' own status, from the rig's Deployment controller: scaled to zero.
    let mp = env
        .until("orders", "ApiServerAvailable=True", |mp| {
            is(mp, "ApiServerAvailable", "True") && is(mp, "IndexerAvailable", "True")
        })
        .await;
    for type_ in ["ApiServerAvailable", "IndexerAvailable"] {
        assert_eq!(condition(&mp, type_).unwrap().reason, "ScaledToZero");
    }
    assert_eq!(
        mp.status.as_ref().unwrap().observed_generation,
        mp.metadata.generation
    );

    // Events say what was done, with CamelCase reasons.
    let events: kube::Api<k8s_openapi::api::events::v1::Event> = env.api();
    let reasons: Vec<String> = events
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("orders"))
        .filter_map(|e| e.reason)
        .collect();
    assert!(reasons.iter().any(|r| r == "TopicCreated"), "{reasons:?}");
    assert!(
        reasons.iter().any(|r| r == "IndexTemplateInstalled"),
        "{reasons:?}"
    );

    // A second reconcile changes nothing (once the Deployment controller has reported).
    let before = child_versions(&env, "orders").await;
    let status_before = env
        .api::<MessagePipeline>()
        .get("orders")
        .await
        .unwrap()
        .status;
    nudge(&env, "orders").await;
    nudge(&env, "orders").await;
    assert_eq!(child_versions(&env, "orders").await, before);
    assert_eq!(
        env.api::<MessagePipeline>()
            .get("orders")
            .await
            .unwrap()
            .status,
        status_before
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_in_children_topic_settings_and_template_is_reverted() {
    let env = Env::new("op-drift").await;
    env.create("drift", env.spec(json!({}))).await;
    let mp = template_ready(&env, "drift").await;
    let topic_name = mp.spec.kafka.topic.name.clone();
    let alias = mp.spec.elasticsearch.alias.clone();

    // A child edited by someone else.
    env.api::<Deployment>()
        .patch(
            "drift-api",
            &PatchParams::apply("someone-else").force(),
            &Patch::Apply(json!({
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "drift-api"},
            "spec": {"replicas": 1}})),
        )
        .await
        .unwrap();
    // A topic setting changed outside, and one added.
    let alter = AlterConfig::new(ResourceSpecifier::Topic(&topic_name))
        .set("retention.ms", "60000")
        .set("segment.ms", "600000");
    for r in admin()
        .alter_configs([&alter], &AdminOptions::new())
        .await
        .unwrap()
    {
        r.unwrap();
    }
    // The template rewritten with other settings.
    let (_, mut template) = search(
        reqwest::Method::GET,
        &format!("/_index_template/{alias}-template"),
        None,
    )
    .await;
    let mut body = template["index_templates"][0]["index_template"].take();
    body["template"]["settings"]["index"]["refresh_interval"] = json!("30s");
    let (status, _) = search(
        reqwest::Method::PUT,
        &format!("/_index_template/{alias}-template"),
        Some(body),
    )
    .await;
    assert_eq!(status, 200);

    nudge(&env, "drift").await;
    wait::until("drift reverted", Duration::from_secs(60), || async {
        let replicas = env.api::<Deployment>().get("drift-api").await.ok()?.spec?.replicas?;
        let (_, settings) = topic(&topic_name).await?;
        let (_, t) = search(reqwest::Method::GET, &format!("/_index_template/{alias}-template"), None).await;
        let refresh = t["index_templates"][0]["index_template"]["template"]["settings"]["index"]["refresh_interval"].clone();
        (replicas == 0
            && settings.get("retention.ms").map(String::as_str) == Some("3600000")
            && !settings.contains_key("segment.ms")
            && refresh == json!("1s"))
        .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_whose_mapping_is_not_the_template_s_names_the_rebuild_that_fixes_it() {
    let env = Env::new("op-mapping").await;
    env.create("mapping", env.spec(json!({}))).await;
    let mp = template_ready(&env, "mapping").await;
    let alias = mp.spec.elasticsearch.alias.clone();
    env.until("mapping", "no rebuild asked", |mp| {
        condition(mp, "Rebuilding").is_some_and(|c| c.reason == "NoRebuild")
    })
    .await;
    // As an index created by an older release's template: its mappings are not today's.
    let (status, _) = search(
        reqwest::Method::PUT,
        &format!("/{alias}-000001/_mapping"),
        Some(json!({"properties": {"legacyField": {"type": "keyword"}}})),
    )
    .await;
    assert_eq!(status, 200);
    nudge(&env, "mapping").await;
    let mp = env
        .until("mapping", "the outdated mapping reported", |mp| {
            condition(mp, "Rebuilding").is_some_and(|c| c.reason == "IndexMappingOutdated")
        })
        .await;
    let rebuilding = condition(&mp, "Rebuilding").unwrap();
    assert!(
        rebuilding.message.contains(&format!("{alias}-000001"))
            && rebuilding.message.contains("indexGeneration to 2"),
        "{}",
        rebuilding.message
    );
    let degraded = condition(&mp, "Degraded").unwrap();
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("True", "IndexMappingOutdated")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_server_refuses_a_partition_decrease_and_a_shard_change_with_the_reason() {
    let env = Env::new("op-cel").await;
    env.create("cel", env.spec(json!({}))).await;
    let api = env.api::<MessagePipeline>();
    for (patch, message) in [
        (
            json!({"spec": {"kafka": {"topic": {"partitions": 2}}}}),
            "partitions can never decrease",
        ),
        (
            json!({"spec": {"elasticsearch": {"shards": 2}}}),
            "shards are immutable",
        ),
    ] {
        let error = api
            .patch("cel", &PatchParams::default(), &Patch::Merge(patch.clone()))
            .await
            .expect_err("refused");
        let kube::Error::Api(status) = error else {
            panic!("{error}")
        };
        assert_eq!(status.code, 422, "{patch}");
        assert!(
            status.message.contains(message),
            "{patch}: {}",
            status.message
        );
    }
    // Growing is fine.
    api.patch(
        "cel",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"kafka": {"topic": {"partitions": 4}}}})),
    )
    .await
    .unwrap();
    let mp = env
        .until("cel", "partitions added", |mp| {
            mp.status.as_ref().and_then(|s| s.observed_generation) == mp.metadata.generation
                && is(mp, "TopicsReady", "True")
        })
        .await;
    assert_eq!(topic(&mp.spec.kafka.topic.name).await.unwrap().0, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_pipeline_claiming_the_same_topic_is_refused_and_touches_nothing() {
    let env = Env::new("op-claims").await;
    let first_spec = env.spec(json!({}));
    env.create("first", first_spec.clone()).await;
    template_ready(&env, "first").await;
    // Same topic on the same cluster, everything else different.
    let mut second_spec = env.spec(json!({}));
    second_spec["kafka"]["topic"]["name"] = first_spec["kafka"]["topic"]["name"].clone();
    env.create("second", second_spec).await;
    let second = env
        .until("second", "ResourceConflict", |mp| {
            condition(mp, "Ready").is_some_and(|c| c.reason == "ResourceConflict")
        })
        .await;
    let message = &condition(&second, "Ready").unwrap().message;
    assert!(
        message.contains("is already claimed by MessagePipeline"),
        "{message}"
    );
    assert!(
        env.api::<Deployment>()
            .get_opt("second-api")
            .await
            .unwrap()
            .is_none()
    );
    let alias = second.spec.elasticsearch.alias.clone();
    let (status, _) = search(
        reqwest::Method::GET,
        &format!("/_index_template/{alias}-template"),
        None,
    )
    .await;
    assert_eq!(status, 404, "nothing installed for the refused pipeline");
}

fn worker_lease(
    pipeline: &str,
    role: &str,
    pod: &str,
    ready: bool,
    breaker: &str,
    renewed: Timestamp,
) -> Lease {
    Lease {
        metadata: ObjectMeta {
            name: Some(format!("{pipeline}-{role}-{pod}")),
            labels: Some(BTreeMap::from([
                (
                    "messagepipeline.io/pipeline".to_owned(),
                    pipeline.to_owned(),
                ),
                ("messagepipeline.io/role".to_owned(), role.to_owned()),
            ])),
            annotations: Some(BTreeMap::from([
                ("messagepipeline.io/ready".to_owned(), ready.to_string()),
                ("messagepipeline.io/breaker".to_owned(), breaker.to_owned()),
            ])),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(pod.to_owned()),
            lease_duration_seconds: Some(30),
            renew_time: Some(MicroTime(renewed)),
            ..LeaseSpec::default()
        }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_follows_worker_leases() {
    // Scaled to zero (the rig's Deployment controller reports it), so availability is not what
    // decides here: the workers' Leases are. Workers running as pods, and the availability of
    // their Deployments, are the cluster e2e's (e2e/tests/cluster.rs).
    let env = Env::new("op-status").await;
    env.create("st", env.spec(json!({}))).await;
    template_ready(&env, "st").await;
    let leases = env.api::<Lease>();
    let now = Timestamp::now();
    for (role, pod) in [
        ("api", "a1"),
        ("api", "a2"),
        ("indexer", "i1"),
        ("indexer", "i2"),
    ] {
        leases
            .create(
                &PostParams::default(),
                &worker_lease("st", role, pod, true, "closed", now),
            )
            .await
            .unwrap();
    }
    // An expired Lease of a worker long gone.
    let stale = worker_lease(
        "st",
        "indexer",
        "gone",
        true,
        "closed",
        Timestamp::from_second(now.as_second() - 600).unwrap(),
    );
    leases.create(&PostParams::default(), &stale).await.unwrap();
    // A live Lease of an earlier object of the same name (deleted and created again while its
    // workers were stopping): not this pipeline's.
    let mut earlier = worker_lease("st", "indexer", "earlier", true, "open", now);
    earlier.metadata.labels.as_mut().unwrap().insert(
        "messagepipeline.io/pipeline-uid".to_owned(),
        "an-earlier-object".to_owned(),
    );
    leases
        .create(&PostParams::default(), &earlier)
        .await
        .unwrap();
    // (Scaled to zero and no live indexer is Ready already: wait for the Leases to be counted.)
    let mp = env
        .until("st", "Ready=True, 2 and 2 ready workers", |mp| {
            let workers = &mp.status.as_ref().unwrap().workers;
            is(mp, "Ready", "True") && workers.api.ready == 2 && workers.indexer.ready == 2
        })
        .await;
    assert!(
        is(&mp, "IndexerHealthy", "True"),
        "live indexers with closed breakers"
    );
    let s = mp.status.unwrap();
    assert_eq!(
        s.workers.indexer.live, 2,
        "neither the expired Lease nor the earlier object's count"
    );
    assert_eq!(s.breaker.as_deref(), Some("closed"));
    wait::until(
        "the expired Lease deleted",
        Duration::from_secs(30),
        || async {
            leases
                .get_opt("st-indexer-gone")
                .await
                .unwrap()
                .is_none()
                .then_some(())
        },
    )
    .await;

    // One indexer reports an open breaker: the Lease annotation change alone triggers a reconcile.
    leases
        .patch(
            "st-indexer-i2",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"annotations": {"messagepipeline.io/breaker": "open"}}}),
            ),
        )
        .await
        .unwrap();
    let mp = env
        .until("st", "IndexerHealthy=False", |mp| {
            is(mp, "IndexerHealthy", "False")
        })
        .await;
    let ready = condition(&mp, "Ready").unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "BreakerOpen")
    );
    assert!(
        ready.message.contains("open circuit breaker"),
        "{}",
        ready.message
    );
    assert!(is(&mp, "Degraded", "True"));
    assert_eq!(mp.status.unwrap().breaker.as_deref(), Some("open"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_is_what_the_kafka_admin_api_reports() {
    let env = Env::new("op-lag").await;
    env.create("lag", env.spec(json!({}))).await;
    let mp = template_ready(&env, "lag").await;
    let (topic_name, group) = (
        mp.spec.kafka.topic.name.clone(),
        mp.spec.kafka.consumer_group.clone(),
    );
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", rig().kafka())
        .create()
        .unwrap();
    for i in 0..30 {
        producer
            .send(
                FutureRecord::to(&topic_name)
                    .key(&format!("k{i}"))
                    .payload("x"),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }
    // The group has committed offset 2 on every partition that has at least 2 records.
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", rig().kafka())
        .set("group.id", &group)
        .create()
        .unwrap();
    let mut expected = 0i64;
    let mut commit = TopicPartitionList::new();
    for p in e2e::kafka::partitions(&topic_name) {
        let (low, high) = consumer
            .fetch_watermarks(&topic_name, p, Duration::from_secs(10))
            .unwrap();
        let at = (low + 2).min(high);
        commit
            .add_partition_offset(&topic_name, p, Offset::Offset(at))
            .unwrap();
        expected += high - at;
    }
    consumer
        .commit(&commit, rdkafka::consumer::CommitMode::Sync)
        .unwrap();
    drop(commit);
    drop(consumer);
    nudge(&env, "lag").await;
    let mp = env
        .until("lag", "the lag in status", |mp| {
            mp.status.as_ref().and_then(|s| s.consumer_lag) == Some(expected)
        })
        .await;
    assert_eq!(mp.status.unwrap().dlq_depth, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletion_policy_delete_removes_topics_template_and_index_and_retain_keeps_them() {
    let env = Env::new("op-delete").await;
    env.create("gone", env.spec(json!({"deletionPolicy": "Delete"})))
        .await;
    env.create("kept", env.spec(json!({}))).await;
    let gone = template_ready(&env, "gone").await;
    let kept = template_ready(&env, "kept").await;
    let api = env.api::<MessagePipeline>();
    api.delete("gone", &DeleteParams::default()).await.unwrap();
    api.delete("kept", &DeleteParams::default()).await.unwrap();
    wait::until("both pipelines gone", Duration::from_secs(60), || async {
        (api.get_opt("gone").await.unwrap().is_none()
            && api.get_opt("kept").await.unwrap().is_none())
        .then_some(())
    })
    .await;
    assert!(
        topic(&gone.spec.kafka.topic.name).await.is_none(),
        "Delete removed the topic"
    );
    assert!(
        topic(&format!("{}.dlq", gone.spec.kafka.topic.name))
            .await
            .is_none()
    );
    let (status, _) = search(
        reqwest::Method::GET,
        &format!(
            "/_index_template/{}-template",
            gone.spec.elasticsearch.alias
        ),
        None,
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = search(
        reqwest::Method::GET,
        &format!("/{}-000001", gone.spec.elasticsearch.alias),
        None,
    )
    .await;
    assert_eq!(status, 404, "Delete removed the index");
    assert!(
        topic(&kept.spec.kafka.topic.name).await.is_some(),
        "Retain kept the topic"
    );
    let (status, _) = search(
        reqwest::Method::GET,
        &format!("/{}-000001", kept.spec.elasticsearch.alias),
        None,
    )
    .await;
    assert_eq!(status, 200, "Retain kept the index");
    let (status, _) = search(
        reqwest::Method::GET,
        &format!(
            "/_index_template/{}-template",
            kept.spec.elasticsearch.alias
        ),
        None,
    )
    .await;
    assert_eq!(status, 200);
    // What Retain kept is this test's to remove (the pipeline is gone, so Env's drop cannot).
    let kept_topics = vec![
        kept.spec.kafka.topic.name.clone(),
        kept.spec.kafka.dlq_name(),
    ];
    let kept_layout = IndexLayout::new(kept.spec.elasticsearch.alias.clone()).unwrap();
    e2e::cleanup::remove(&kept.spec.elasticsearch.url, &kept_layout, &kept_topics).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_paused_annotation_stops_changes() {
    let env = Env::new("op-pause").await;
    env.create("p", env.spec(json!({}))).await;
    template_ready(&env, "p").await;
    let api = env.api::<MessagePipeline>();
    api.patch(
        "p",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"messagepipeline.io/paused": "true"}}})),
    )
    .await
    .unwrap();
    let before = env.reconciles();
    api.patch(
        "p",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"api": {"replicas": 1}}})),
    )
    .await
    .unwrap();
    wait::until(
        "a reconcile of the paused pipeline",
        Duration::from_secs(30),
        || async { (env.reconciles() > before).then_some(()) },
    )
    .await;
    let replicas = env
        .api::<Deployment>()
        .get("p-api")
        .await
        .unwrap()
        .spec
        .unwrap()
        .replicas;
    assert_eq!(replicas, Some(0), "paused: the spec change is not applied");
    let mp = api.get("p").await.unwrap();
    assert!(mp.status.as_ref().unwrap().observed_generation < mp.meta().generation);

    api.patch(
        "p",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"messagepipeline.io/paused": null}}})),
    )
    .await
    .unwrap();
    wait::until("applied once unpaused", Duration::from_secs(30), || async {
        (env.api::<Deployment>()
            .get("p-api")
            .await
            .ok()?
            .spec?
            .replicas
            == Some(1))
        .then_some(())
    })
    .await;
}

/// `url` with the host written as `localhost` where it says `127.0.0.1`: another spelling of
/// the same server.
fn respelled(url: &str) -> String {
    let other = url.replace("127.0.0.1", "localhost");
    assert_ne!(other, url, "{url} names 127.0.0.1");
    other
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_on_respelled_addresses_is_refused_and_deleting_it_under_delete_touches_nothing() {
    let env = Env::new("op-copy").await;
    let first_spec = env.spec(json!({"deletionPolicy": "Delete"}));
    env.create("chat", first_spec.clone()).await;
    let chat = template_ready(&env, "chat").await;
    // The same topic, alias and collection, on the same Kafka and engine spelled otherwise.
    let mut copy_spec = first_spec.clone();
    copy_spec["kafka"]["bootstrapServers"] = json!(respelled(rig().kafka()));
    copy_spec["elasticsearch"]["url"] = json!(respelled(rig().search_url()));
    env.create("chat-copy", copy_spec).await;
    let copy = env
        .until("chat-copy", "ResourceConflict", |mp| {
            condition(mp, "Ready").is_some_and(|c| c.reason == "ResourceConflict")
        })
        .await;
    let message = &condition(&copy, "Ready").unwrap().message;
    for claim in ["topic", "alias", "collection"] {
        assert!(message.contains(claim), "{claim}: {message}");
    }
    let external = copy.status.clone().unwrap().external;
    assert!(
        external.topics.is_empty(),
        "a refused pipeline made nothing: {external:?}"
    );
    assert_eq!(
        external.kafka.map(|k| k.id),
        chat.status.clone().unwrap().external.kafka.map(|k| k.id),
        "one cluster, one id"
    );
    env.api::<MessagePipeline>()
        .delete("chat-copy", &DeleteParams::default())
        .await
        .unwrap();
    wait::until("chat-copy gone", Duration::from_secs(60), || async {
        env.api::<MessagePipeline>()
            .get_opt("chat-copy")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    // chat's topics, template and index are all still there, and chat still says so.
    let topic_name = &chat.spec.kafka.topic.name;
    assert!(topic(topic_name).await.is_some(), "chat's topic survived");
    assert!(
        topic(&chat.spec.kafka.dlq_name()).await.is_some(),
        "and its DLQ"
    );
    let alias = &chat.spec.elasticsearch.alias;
    let (status, _) = search(
        reqwest::Method::GET,
        &format!("/_index_template/{alias}-template"),
        None,
    )
    .await;
    assert_eq!(status, 200, "chat's template survived");
    let (status, _) = search(reqwest::Method::GET, &format!("/{alias}-000001"), None).await;
    assert_eq!(status, 200, "chat's index survived");
    nudge(&env, "chat").await;
    let chat = template_ready(&env, "chat").await;
    assert!(is(&chat, "TopicsReady", "True"), "{:?}", chat.status);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_or_index_deleted_behind_the_operator_makes_the_pipeline_not_ready_with_what_to_do()
{
    let env = Env::new("op-lost").await;
    env.create("p", env.spec(json!({}))).await;
    let p = template_ready(&env, "p").await;
    env.until("p", "Ready", |mp| is(mp, "Ready", "True")).await;

    // The events topic deleted by hand: made again (so the pipeline flows) and said.
    let name = p.spec.kafka.topic.name.clone();
    admin()
        .delete_topics(&[name.as_str()], &AdminOptions::new())
        .await
        .unwrap();
    wait::until("the topic gone", Duration::from_secs(30), || async {
        topic(&name).await.is_none().then_some(())
    })
    .await;
    nudge(&env, "p").await;
    let lost = env
        .until("p", "TopicsReady=False TopicLost", |mp| {
            condition(mp, "TopicsReady").is_some_and(|c| c.reason == "TopicLost")
        })
        .await;
    assert!(is(&lost, "Ready", "False"));
    assert_eq!(condition(&lost, "Ready").unwrap().reason, "TopicLost");
    assert!(
        condition(&lost, "TopicsReady")
            .unwrap()
            .message
            .contains("indexGeneration to 2"),
        "{:?}",
        condition(&lost, "TopicsReady")
    );
    assert!(topic(&name).await.is_some(), "made again");

    // The index deleted by hand: not made again empty, and every condition says so.
    let alias = p.spec.elasticsearch.alias.clone();
    let (status, _) = search(reqwest::Method::DELETE, &format!("/{alias}-000001"), None).await;
    assert_eq!(status, 200);
    nudge(&env, "p").await;
    let gone = env
        .until("p", "IndexTemplateReady=False IndexLost", |mp| {
            condition(mp, "IndexTemplateReady").is_some_and(|c| c.reason == "IndexLost")
        })
        .await;
    assert!(is(&gone, "Ready", "False"));
    let (status, _) = search(reqwest::Method::GET, &format!("/{alias}-000001"), None).await;
    assert_eq!(status, 404, "no empty index in its place");
    for c in &gone.status.as_ref().unwrap().conditions {
        assert_eq!(c.observed_generation, gone.metadata.generation, "{c:?}");
    }
}

//! Namespaces deleted with their pipeline. Each pipeline here uses the rig's secured Kafka and
//! search engine with the operator's credentials in Secrets of its own namespace, and
//! `deletionPolicy: Delete`: its cleanup needs Secrets that the namespace's deletion removes.
//! With the operator running, the namespace goes and so do the pipeline's topics and index (the
//! operator reaches the clusters as it last did). With the operator away while the namespace
//! is deleted (it comes back to find the Secrets gone), the namespace still goes, and what could
//! not be reached is left, said in the operator's log, and removed here.

use std::time::{Duration, Instant};

use e2e::cluster::{condition, ready_with};
use e2e::rig::rig;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams};
use pipeline_contract::install::SearchEndpoint;
use serde_json::json;

use crate::Figures;
use crate::world::{READY_WITHIN, World, eventually};

/// A doomed pipeline: its namespace, topic, DLQ and alias.
struct Doomed {
    namespace: String,
    topic: String,
    dlq: String,
    alias: String,
}

async fn doomed(world: &World, prefix: &str) -> Doomed {
    let namespace = world.install.namespace(prefix).await;
    let ca = std::fs::read_to_string(rig().ca_cert()).unwrap();
    let secrets = [
        ("rig-ca", json!({"ca.crt": ca})),
        (
            "kafka-operator",
            json!({"username": "mp-operator", "password": rig().kafka_password("operator")}),
        ),
        (
            "search-operator",
            json!({"username": "mp-operator", "password": rig().search_password("operator")}),
        ),
    ];
    let api = world.install.api_in::<Secret>(&namespace);
    for (name, data) in secrets {
        let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "stringData": data});
        api.patch(
            name,
            &PatchParams::apply("faults").force(),
            &Patch::Apply(&secret),
        )
        .await
        .unwrap();
    }
    let id = e2e::unique("f");
    let d = Doomed {
        namespace,
        topic: format!("secure-events-{id}"),
        dlq: format!("secure-dlq-{id}"),
        alias: format!("secure-messages-{id}"),
    };
    let endpoints = rig().secure_pod_endpoints();
    let ca = json!({"name": "rig-ca", "key": "ca.crt"});
    let pipeline = world
        .install
        .apply_pipeline_in(
            &d.namespace,
            "doomed",
            endpoints.search_url,
            json!({
                "api": {"replicas": 0},
                "indexer": {"replicas": 0},
                "kafka": {
                    "bootstrapServers": endpoints.kafka,
                    "topic": {"name": d.topic},
                    "dlq": {"name": d.dlq},
                    "tls": {"caSecretRef": ca},
                    "sasl": {"mechanism": "SCRAM-SHA-512", "credentialsSecretRef": {"name": "kafka-operator"}},
                },
                "elasticsearch": {
                    "alias": d.alias,
                    "credentialsSecretRef": {"name": "search-operator"},
                    "caSecretRef": ca,
                },
                "deletionPolicy": "Delete",
            }),
        )
        .await;
    let mp = pipeline
        .until(
            &world.install,
            "the doomed pipeline Ready",
            READY_WITHIN,
            |mp| ready_with(mp, 0, 0),
        )
        .await;
    assert_eq!(condition(&mp, "TopicsReady"), Some("True"));
    assert!(
        exists(&d).await.iter().all(|e| *e),
        "made: {:?}",
        exists(&d).await
    );
    d
}

/// Whether the topic, the DLQ and the index template exist (the admin of the secured engine
/// reads the template).
async fn exists(d: &Doomed) -> [bool; 3] {
    let (topic, dlq) = (d.topic.clone(), d.dlq.clone());
    let (t, q) = tokio::task::spawn_blocking(move || {
        (
            e2e::kafka::topic_exists(&topic),
            e2e::kafka::topic_exists(&dlq),
        )
    })
    .await
    .unwrap();
    let (http, endpoint) = secure_admin();
    let template = endpoint
        .request(
            &http,
            reqwest::Method::GET,
            &format!("/_index_template/{}-template", d.alias),
        )
        .send()
        .await
        .unwrap()
        .status()
        .is_success();
    [t, q, template]
}

fn secure_admin() -> (reqwest::Client, SearchEndpoint) {
    let ca = std::fs::read(rig().ca_cert()).unwrap();
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .build()
        .unwrap();
    let endpoint = SearchEndpoint::new(rig().search_secure_url())
        .with_basic_auth("mp-admin", rig().search_password("admin"));
    (http, endpoint)
}

async fn delete_namespace(world: &World, namespace: &str) {
    rig()
        .delete_namespace(&world.install.client, namespace)
        .await;
}

async fn gone(world: &World, namespace: &str, within: Duration) -> Duration {
    let started = Instant::now();
    let api: Api<Namespace> = Api::all(world.install.client.clone());
    eventually(&format!("namespace {namespace} gone"), within, || async {
        api.get_opt(namespace).await.ok()?.is_none().then_some(())
    })
    .await;
    started.elapsed()
}

/// Scales the operator's Deployment to `replicas` and waits until its pods agree.
async fn operator_replicas(world: &World, replicas: i32) {
    let api = world.install.api::<Deployment>();
    let selector = format!("app.kubernetes.io/instance={}", world.install.release);
    let deployment = api
        .list(&ListParams::default().labels(&selector))
        .await
        .unwrap()
        .items
        .pop()
        .expect("the operator's Deployment");
    let name = deployment.metadata.name.unwrap();
    api.patch(
        &name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": replicas}})),
    )
    .await
    .unwrap();
    eventually("the operator scaled", READY_WITHIN, || async {
        let pods = world.install.operator_pods().await;
        let ready = pods.iter().filter(|p| e2e::cluster::pod_ready(p)).count();
        (pods.len() == usize::try_from(replicas).unwrap()
            && ready == usize::try_from(replicas).unwrap())
        .then_some(())
    })
    .await;
}

pub async fn run(world: &World) -> Figures {
    let started = Instant::now();
    let (with, without) = tokio::join!(
        doomed(world, "faults-doomed"),
        doomed(world, "faults-orphan")
    );

    // The operator up: the namespace goes, and the pipeline's topics and index with it.
    delete_namespace(world, &with.namespace).await;
    let first = gone(world, &with.namespace, Duration::from_secs(120)).await;
    assert_eq!(
        exists(&with).await,
        [false; 3],
        "deletionPolicy Delete removed topic, DLQ and template"
    );

    // The operator away while the namespace is deleted: back, it finds the Secrets gone.
    operator_replicas(world, 0).await;
    delete_namespace(world, &without.namespace).await;
    let secrets = world.install.api_in::<Secret>(&without.namespace);
    eventually(
        "the Secrets deleted with the namespace",
        Duration::from_secs(60),
        || async {
            secrets
                .get_opt("kafka-operator")
                .await
                .ok()?
                .is_none()
                .then_some(())
        },
    )
    .await;
    operator_replicas(world, 1).await;
    let second = gone(world, &without.namespace, Duration::from_secs(120)).await;
    let left = exists(&without).await;
    // What it could not reach is this test's to remove.
    let (http, endpoint) = secure_admin();
    let layout = pipeline_contract::search::IndexLayout::new(without.alias.clone()).unwrap();
    for path in [
        format!("/_index_template/{}", layout.template_name()),
        format!("/{}", layout.index_pattern()),
    ] {
        let _ = endpoint
            .request(&http, reqwest::Method::DELETE, &path)
            .send()
            .await;
    }
    e2e::cleanup::remove(
        rig().search_url(),
        &pipeline_contract::search::IndexLayout::new(e2e::unique("none")).unwrap(),
        &[without.topic.clone(), without.dlq.clone()],
    )
    .await;

    let documents = world.check("namespaces", &Default::default()).await;
    Figures {
        class: "namespaces",
        seconds: started.elapsed().as_secs_f64(),
        writes: 0,
        faults: format!(
            "a namespace deleted with its secured Delete pipeline: gone in {first:.0?} with its topics and index; deleted while the operator was away: gone in {second:.0?} after it came back, leaving (topic, DLQ, template) = {left:?}"
        ),
        documents,
    }
}

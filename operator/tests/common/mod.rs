//! What the operator's tests against the rig share: the CRD installed, a unique namespace with
//! the Secrets a pipeline references, a pipeline on the rig's Kafka and search engine with unique
//! topic, group and alias, and the controller running in this process for that namespace.
#![allow(dead_code)] // each test binary uses its own part

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use e2e::{rig::rig, unique};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Client, ResourceExt};
use messagepipeline_crd::{Condition, MessagePipeline};
use operator::controller::{self, Context};
use operator::metrics::Metrics;
use pipeline_contract::search::IndexLayout;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// Applies the committed CRD (what the chart ships) and waits until it is established.
pub async fn install_crd(client: &Client) {
    let yaml = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../crds/messagepipeline.yaml"
    ))
    .unwrap();
    let crd: CustomResourceDefinition = serde_saphyr::from_str(&yaml).unwrap();
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    api.patch(
        &crd.name_any(),
        &PatchParams::apply("operator-tests").force(),
        &Patch::Apply(&crd),
    )
    .await
    .unwrap();
    tokio::time::timeout(
        Duration::from_secs(30),
        await_condition(api, &crd.name_any(), conditions::is_crd_established()),
    )
    .await
    .expect("CRD established")
    .unwrap();
}

/// One namespace, its Secrets, and a controller watching it.
pub struct Env {
    pub client: Client,
    pub namespace: String,
    pub metrics: Arc<Metrics>,
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Env {
    pub async fn new(prefix: &str) -> Self {
        let client = rig().kube_client().await;
        install_crd(&client).await;
        let namespace = unique(prefix);
        Api::<Namespace>::all(client.clone())
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": namespace}})).unwrap(),
            )
            .await
            .unwrap();
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
        for (name, key, value) in [
            (
                "api-keys",
                "keys.yaml",
                "- {name: a, tenant: t, sha256: 0000000000000000000000000000000000000000000000000000000000000000}\n",
            ),
            ("mongodb", "uri", rig().mongodb_uri()),
        ] {
            let secret = Secret {
                metadata: kube::api::ObjectMeta {
                    name: Some(name.into()),
                    ..Default::default()
                },
                data: Some(BTreeMap::from([(
                    key.to_owned(),
                    ByteString(value.as_bytes().to_vec()),
                )])),
                ..Secret::default()
            };
            secrets
                .create(&PostParams::default(), &secret)
                .await
                .unwrap();
        }
        let metrics = Arc::new(Metrics::new());
        let mut env = Self {
            client,
            namespace,
            metrics,
            stop: CancellationToken::new(),
            task: None,
        };
        env.start();
        env
    }

    /// Starts the controller for this namespace (again, after `stop_controller`).
    pub fn start(&mut self) {
        self.stop = CancellationToken::new();
        let ctx = Arc::new(Context::new(
            self.client.clone(),
            self.metrics.clone(),
            Some("tests".into()),
        ));
        self.task = Some(tokio::spawn(controller::run(
            ctx,
            Some(self.namespace.clone()),
            self.stop.clone(),
        )));
    }

    pub async fn stop_controller(&mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// A pipeline spec on the rig with a unique topic, group, alias and database (a collection
    /// is one pipeline's claim); `patch` is merged in.
    /// Both Deployments have 0 replicas: these tests are about what the operator writes, and the
    /// rig's controllers would otherwise start pods (of an image that is not there); workers
    /// running as pods are the cluster e2e's (e2e/tests/cluster.rs).
    pub fn spec(&self, patch: Value) -> Value {
        let mut spec = json!({
            "image": "registry.example/message-pipeline:0.1.0",
            "api": {"replicas": 0, "auth": {"apiKeysSecretRef": {"name": "api-keys", "key": "keys.yaml"}}},
            "indexer": {"replicas": 0},
            "mongodb": {"uriSecretRef": {"name": "mongodb", "key": "uri"}, "database": unique("op").replace('-', "_")},
            "kafka": {
                "bootstrapServers": rig().kafka(),
                "topic": {"name": unique("op-events"), "partitions": 3, "replicationFactor": 1, "retentionMs": 3_600_000},
                "dlq": {"partitions": 1, "retentionMs": 7_200_000},
                "consumerGroup": unique("op-group"),
            },
            "elasticsearch": {"url": rig().search_url(), "alias": unique("op-messages"), "replicas": 0},
        });
        merge(&mut spec, patch);
        spec
    }

    /// Creates a MessagePipeline named `name` with `spec`.
    pub async fn create(&self, name: &str, spec: Value) -> MessagePipeline {
        let mp: MessagePipeline = serde_json::from_value(json!({
            "apiVersion": "messagepipeline.io/v1alpha1",
            "kind": "MessagePipeline",
            "metadata": {"name": name},
            "spec": spec,
        }))
        .unwrap();
        self.api::<MessagePipeline>()
            .create(&PostParams::default(), &mp)
            .await
            .unwrap()
    }

    /// Waits until `check` holds for the pipeline; returns it. On timeout the panic shows the
    /// conditions last seen.
    pub async fn until(
        &self,
        name: &str,
        what: &str,
        check: impl Fn(&MessagePipeline) -> bool,
    ) -> MessagePipeline {
        let api = self.api::<MessagePipeline>();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let mut last = None;
        loop {
            if let Ok(mp) = api.get(name).await {
                if check(&mp) {
                    return mp;
                }
                last = mp.status.map(|s| s.conditions);
            }
            assert!(
                std::time::Instant::now() < deadline,
                "timed out after 60 s waiting for {what}; conditions last seen: {last:#?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Creates the Secret `name` in this namespace with `data`.
    pub async fn secret(&self, name: &str, data: &[(&str, &str)]) {
        let secret = Secret {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            data: Some(
                data.iter()
                    .map(|(k, v)| ((*k).to_owned(), ByteString(v.as_bytes().to_vec())))
                    .collect(),
            ),
            ..Secret::default()
        };
        self.api::<Secret>()
            .create(&PostParams::default(), &secret)
            .await
            .unwrap();
    }

    /// Reconciles started so far.
    pub fn reconciles(&self) -> u64 {
        self.metrics.reconciles.get()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        self.stop.cancel();
        // The namespace (and what is in it) goes; so do a passed test's topics and index (a
        // failed one's stay, to show why).
        let (client, namespace) = (self.client.clone(), self.namespace.clone());
        let passed = !std::thread::panicking();
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                // Finalizers would hold the namespace: drop them first (the controller is stopped).
                let api: Api<MessagePipeline> = Api::namespaced(client.clone(), &namespace);
                if let Ok(list) = api.list(&Default::default()).await {
                    for mp in list {
                        if passed {
                            let (kafka, search) = (&mp.spec.kafka, &mp.spec.elasticsearch);
                            if let Ok(layout) = IndexLayout::new(search.alias.clone()) {
                                let topics = vec![kafka.topic.name.clone(), kafka.dlq_name()];
                                e2e::cleanup::remove(&search.url, &layout, &topics).await;
                            }
                        }
                        let _ = api
                            .patch(
                                &mp.name_any(),
                                &PatchParams::default(),
                                &Patch::Merge(json!({"metadata": {"finalizers": null}})),
                            )
                            .await;
                    }
                }
                let _ = Api::<Namespace>::all(client)
                    .delete(&namespace, &DeleteParams::default())
                    .await;
            });
        })
        .join();
    }
}

pub fn merge(target: &mut Value, patch: Value) {
    if let (Some(t), Value::Object(p)) = (target.as_object_mut(), patch.clone()) {
        for (k, v) in p {
            match t.get_mut(&k) {
                Some(existing) if existing.is_object() && v.is_object() => merge(existing, v),
                _ => {
                    t.insert(k, v);
                }
            }
        }
    }
}

pub fn condition<'a>(mp: &'a MessagePipeline, type_: &str) -> Option<&'a Condition> {
    mp.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
}

pub fn is(mp: &MessagePipeline, type_: &str, status: &str) -> bool {
    condition(mp, type_).is_some_and(|c| c.status == status)
}

//! The product installed on the rig's node as users install it: the CRD applied server-side, the
//! operator from its chart with `helm`, running as a pod, and MessagePipelines whose workers run
//! as pods of the image `make image` imported; plus the checks every cluster scenario ends with
//! (nothing acknowledged lost, the index equal to MongoDB document by document).

use std::collections::HashMap;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use messagepipeline_crd::MessagePipeline;
use serde_json::{Value, json};

use crate::forward::ServiceForward;
use crate::rig::{ServiceAccess, rig};
use crate::state::{self, Versions};
use crate::traffic::{Acked, writer};
use crate::{unique, wait};

/// The chart, the CRD and the repository they come from.
const CHART: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../charts/message-pipeline-operator"
);
const CRD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../crds/messagepipeline.yaml");
/// The API key of the tenant the scenarios write as (its SHA-256 is in the keys Secret).
pub const KEY: &str = "cluster-e2e-key-7d41a9";
pub const TENANT: &str = "cluster-tenant";

/// Runs `command`, panicking with its output when it fails; returns stdout.
pub fn run(mut command: Command, what: &str) -> String {
    let output = command.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        output.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// One namespace holding an operator release (watching only this namespace) and the Secrets a
/// pipeline references.
#[allow(missing_debug_implementations)] // kube::Client is not Debug
pub struct Install {
    pub client: kube::Client,
    pub namespace: String,
    pub release: String,
    /// The images on the node: the one installed, and a second name for the same image.
    pub image: String,
    pub image_next: String,
    /// Port-forwards to the pipelines' Services ([`Pipeline::api_forwarded`]), closed with it.
    forwards: Mutex<Vec<ServiceForward>>,
    /// The operator watches every namespace (else only its own).
    cluster_wide: bool,
    /// Namespaces made for pipelines beside the install's ([`Install::namespace`]), removed
    /// with it.
    namespaces: Mutex<Vec<String>>,
    removed: bool,
}

impl Drop for Install {
    fn drop(&mut self) {
        if !self.removed {
            self.teardown();
        }
    }
}

impl Install {
    /// CRD, namespace, Secrets, and `helm upgrade --install` of the operator (waits until its
    /// pod is ready).
    pub async fn new(prefix: &str) -> Self {
        Self::with_scope(prefix, false).await
    }

    /// [`Install::new`] with an operator watching every namespace (pipelines may then live in
    /// namespaces of their own, [`Install::namespace`]).
    pub async fn cluster_wide(prefix: &str) -> Self {
        Self::with_scope(prefix, true).await
    }

    async fn with_scope(prefix: &str, cluster_wide: bool) -> Self {
        let client = rig().kube_client().await;
        let mut apply = rig().kubectl();
        apply.args(["apply", "--server-side", "--force-conflicts", "-f", CRD]);
        run(apply, "kubectl apply --server-side of the CRD");
        let mut established = rig().kubectl();
        established.args([
            "wait",
            "--for=condition=Established",
            "crd/messagepipelines.messagepipeline.io",
            "--timeout=60s",
        ]);
        run(established, "the CRD established");

        let namespace = rig().create_namespace(&client, prefix).await;
        let (image, image_next) = rig().worker_image();
        let install = Self {
            client,
            release: format!("op-{}", &namespace[namespace.len() - 8..]),
            namespace,
            image: image.to_owned(),
            image_next: image_next.to_owned(),
            forwards: Mutex::default(),
            cluster_wide,
            namespaces: Mutex::default(),
            removed: false,
        };
        install.secrets(&install.namespace).await;
        install.helm_upgrade(&install.image.clone(), &[]);
        install
    }

    /// A namespace for pipelines beside the install's, with the same Secrets (the API key and
    /// the MongoDB URI); deleted with the install unless a scenario deletes it first.
    pub async fn namespace(&self, prefix: &str) -> String {
        assert!(
            self.cluster_wide,
            "an operator watching one namespace sees no other"
        );
        let name = rig().create_namespace(&self.client, prefix).await;
        self.secrets(&name).await;
        self.namespaces.lock().unwrap().push(name.clone());
        name
    }

    async fn secrets(&self, namespace: &str) {
        use sha2::{Digest, Sha256};
        let digest: String = Sha256::digest(KEY.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let keys = format!("- name: cluster-e2e\n  tenant: {TENANT}\n  sha256: {digest}\n");
        let api: Api<k8s_openapi::api::core::v1::Secret> =
            Api::namespaced(self.client.clone(), namespace);
        for (name, key, value) in [
            ("api-keys", "keys.yaml", keys.as_str()),
            ("mongodb", "uri", rig().pod_endpoints().mongodb_uri),
        ] {
            let secret = json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": name},
                "stringData": {key: value},
            });
            api.patch(
                name,
                &PatchParams::apply("cluster-e2e").force(),
                &Patch::Apply(&secret),
            )
            .await
            .unwrap();
        }
    }

    /// `helm upgrade --install` of the operator from `image`, with extra `--set`s; waits until
    /// the release's pods are ready.
    pub fn helm_upgrade(&self, image: &str, sets: &[&str]) {
        let (repository, tag) = image.rsplit_once(':').expect("an image with a tag");
        let mut helm = rig().helm();
        helm.args([
            "upgrade",
            "--install",
            &self.release,
            CHART,
            "--namespace",
            &self.namespace,
            "--skip-crds",
            "--wait",
            "--timeout",
            "180s",
        ]);
        let watch = if self.cluster_wide {
            String::new()
        } else {
            self.namespace.clone()
        };
        for set in [
            format!("watchNamespace={watch}"),
            format!("image.repository={repository}"),
            format!("image.tag={tag}"),
            "image.pullPolicy=Never".to_owned(),
        ]
        .iter()
        .map(String::as_str)
        .chain(sets.iter().copied())
        {
            helm.args(["--set", set]);
        }
        run(helm, &format!("helm upgrade --install {}", self.release));
    }

    /// The pipelines deleted while the operator still runs (their finalizer is its to remove; a
    /// namespace holding one would stay Terminating), then `helm uninstall` (its cluster-wide
    /// objects go with it), then the namespace. A scenario that fails before calling this gets
    /// the same when the `Install` is dropped: its pods would otherwise hold the node's capacity
    /// and starve the next scenario.
    pub async fn remove(mut self) {
        self.removed = true;
        tokio::task::block_in_place(|| self.teardown());
    }

    fn teardown(&self) {
        let others = self.namespaces.lock().unwrap().clone();
        for namespace in std::iter::once(&self.namespace).chain(&others) {
            let mut delete = rig().kubectl();
            delete.args([
                "delete",
                "messagepipelines",
                "--all",
                "--ignore-not-found",
                "--namespace",
                namespace,
                "--timeout=90s",
            ]);
            let _ = delete.output();
        }
        let mut helm = rig().helm();
        helm.args([
            "uninstall",
            &self.release,
            "--namespace",
            &self.namespace,
            "--wait",
        ]);
        let _ = helm.output();
        for namespace in std::iter::once(&self.namespace).chain(&others) {
            let mut delete = rig().kubectl();
            delete.args([
                "delete",
                "namespace",
                namespace,
                "--ignore-not-found",
                "--wait=false",
            ]);
            let _ = delete.output();
        }
    }

    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        self.api_in(&self.namespace)
    }

    /// Objects of kind `K` in `namespace`.
    pub fn api_in<K>(&self, namespace: &str) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), namespace)
    }

    /// Asserts that the install's namespace has an Event of each of `reasons`.
    pub async fn assert_events(&self, reasons: &[&str]) {
        let events = self
            .api::<k8s_openapi::api::core::v1::Event>()
            .list(&ListParams::default())
            .await
            .unwrap();
        let seen: Vec<String> = events
            .items
            .iter()
            .filter_map(|e| e.reason.clone())
            .collect();
        for reason in reasons {
            assert!(
                seen.iter().any(|r| r == reason),
                "no {reason} Event in {seen:?}"
            );
        }
    }

    /// The operator's pods (of this release).
    pub async fn operator_pods(&self) -> Vec<Pod> {
        self.api::<Pod>()
            .list(
                &ListParams::default()
                    .labels(&format!("app.kubernetes.io/instance={}", self.release)),
            )
            .await
            .unwrap()
            .items
    }

    /// Applies a MessagePipeline named `name` on the rig's pod-reachable endpoints (unique topic,
    /// group, alias and database), `search_url` for the search engine, `patch` merged in.
    pub async fn apply_pipeline(&self, name: &str, search_url: &str, patch: Value) -> Pipeline {
        self.apply_pipeline_in(&self.namespace, name, search_url, patch)
            .await
    }

    /// [`Install::apply_pipeline`] in `namespace`.
    pub async fn apply_pipeline_in(
        &self,
        namespace: &str,
        name: &str,
        search_url: &str,
        patch: Value,
    ) -> Pipeline {
        let endpoints = rig().pod_endpoints();
        let pipeline = Pipeline {
            name: name.to_owned(),
            namespace: namespace.to_owned(),
            database: unique("cluster").replace('-', "_"),
            topic: unique("cluster-events"),
            alias: unique("cluster-messages"),
        };
        let mut spec = json!({
            "image": self.image,
            "imagePullPolicy": "Never",
            "api": {"replicas": 2, "auth": {"apiKeysSecretRef": {"name": "api-keys", "key": "keys.yaml"}}},
            "indexer": {"replicas": 2},
            "mongodb": {"uriSecretRef": {"name": "mongodb", "key": "uri"}, "database": pipeline.database},
            "kafka": {
                "bootstrapServers": endpoints.kafka,
                "topic": {"name": pipeline.topic, "partitions": 3, "replicationFactor": 1},
                "consumerGroup": unique("cluster-group"),
            },
            "elasticsearch": {"url": search_url, "alias": pipeline.alias, "replicas": 0},
            "deletionPolicy": "Delete",
        });
        merge(&mut spec, patch);
        self.patch_pipeline_in(namespace, name, spec).await;
        pipeline
    }

    /// [`Install::apply_pipeline`], then waits (at most `within`) until it is Ready with its
    /// `api` and `indexer` replicas ready.
    pub async fn ready_pipeline(
        &self,
        name: &str,
        search_url: &str,
        patch: Value,
        (api, indexer): (i32, i32),
        within: Duration,
    ) -> Pipeline {
        let pipeline = self.apply_pipeline(name, search_url, patch).await;
        pipeline
            .until(
                self,
                &format!("Ready=True with {api} and {indexer} ready workers"),
                within,
                |mp| ready_with(mp, api, indexer),
            )
            .await;
        pipeline
    }

    /// The pipeline's spec as stored, `change` applied, applied again (server-side).
    pub async fn change_spec(&self, name: &str, change: impl FnOnce(&mut Value)) {
        let stored = self.api::<MessagePipeline>().get(name).await.unwrap();
        let mut spec = serde_json::to_value(&stored.spec).unwrap();
        change(&mut spec);
        self.patch_pipeline(name, spec).await;
    }

    /// Server-side apply of a pipeline's whole spec.
    pub async fn patch_pipeline(&self, name: &str, spec: Value) {
        self.patch_pipeline_in(&self.namespace, name, spec).await;
    }

    /// [`Install::patch_pipeline`] in `namespace`.
    pub async fn patch_pipeline_in(&self, namespace: &str, name: &str, spec: Value) {
        let mp = json!({
            "apiVersion": "messagepipeline.io/v1alpha1",
            "kind": "MessagePipeline",
            "metadata": {"name": name},
            "spec": spec,
        });
        self.api_in::<MessagePipeline>(namespace)
            .patch(
                name,
                &PatchParams::apply("cluster-e2e").force(),
                &Patch::Apply(&mp),
            )
            .await
            .unwrap_or_else(|e| panic!("applying MessagePipeline {namespace}/{name}: {e}"));
    }
}

/// A pipeline the scenarios applied: where its data is.
#[derive(Debug, Clone)]
pub struct Pipeline {
    pub name: String,
    pub namespace: String,
    pub database: String,
    pub topic: String,
    pub alias: String,
}

fn merge(target: &mut Value, patch: Value) {
    if let (Some(t), Value::Object(p)) = (target.as_object_mut(), patch) {
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

impl Pipeline {
    pub fn mps(&self, install: &Install) -> Api<MessagePipeline> {
        install.api_in(&self.namespace)
    }

    /// Waits until `check` holds for the resource (at most `timeout`); returns it. On timeout the
    /// panic shows what was last seen: the pipeline's conditions, and the install namespace's
    /// pods with the end of their logs.
    pub async fn until(
        &self,
        install: &Install,
        what: &str,
        timeout: Duration,
        check: impl Fn(&MessagePipeline) -> bool,
    ) -> MessagePipeline {
        let api = self.mps(install);
        let deadline = Instant::now() + timeout;
        let mut last = None;
        loop {
            if let Ok(mp) = api.get(&self.name).await {
                if check(&mp) {
                    return mp;
                }
                last = Some(mp);
            }
            if Instant::now() >= deadline {
                panic!(
                    "timed out after {timeout:?} waiting for {what}\n{}",
                    diagnosis(install, &self.namespace, last.as_ref()).await
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The api-server's Service as this machine reaches it ([`Rig::service_access`]): its
    /// ClusterIP through kube-proxy's rules where this machine is the node, else
    /// [`Pipeline::api_forwarded`]. A ClusterIP is returned once it answers `/live`: pods being
    /// ready does not mean that kube-proxy has programmed their endpoints yet (until it has,
    /// connections are refused).
    ///
    /// [`Rig::service_access`]: crate::rig::Rig::service_access
    pub async fn api_base(&self, install: &Install) -> String {
        match rig().service_access() {
            ServiceAccess::ClusterIp => {
                let service = install
                    .api_in::<Service>(&self.namespace)
                    .get(&self.api_service())
                    .await
                    .unwrap();
                let ip = service.spec.and_then(|s| s.cluster_ip).unwrap();
                let base = format!("http://{ip}");
                let http = reqwest::Client::builder()
                    .timeout(Duration::from_secs(2))
                    .build()
                    .unwrap();
                let live = format!("{base}/live");
                wait::until(
                    &format!("the api-server's Service at {base} to answer"),
                    Duration::from_secs(60),
                    || async {
                        let answer = http.get(&live).send().await.ok()?;
                        answer.status().is_success().then_some(())
                    },
                )
                .await;
                base
            }
            ServiceAccess::PortForward => self.api_forwarded(install).await,
        }
    }

    /// The api-server's Service through the API server's port-forward to its ready endpoints
    /// (open until `install` is removed).
    pub async fn api_forwarded(&self, install: &Install) -> String {
        let forward = ServiceForward::start(
            install.client.clone(),
            &self.namespace,
            &self.api_service(),
            80,
        )
        .await;
        let url = forward.url();
        install.forwards.lock().unwrap().push(forward);
        url
    }

    fn api_service(&self) -> String {
        format!("{}-api", self.name)
    }

    /// The pods of both roles.
    pub async fn worker_pods(&self, install: &Install) -> Vec<Pod> {
        let mut pods = self.pods(install, "api").await;
        pods.extend(self.pods(install, "indexer").await);
        pods
    }

    /// Pods of one role (`api` or `indexer`).
    pub async fn pods(&self, install: &Install, role: &str) -> Vec<Pod> {
        install
            .api_in::<Pod>(&self.namespace)
            .list(&ListParams::default().labels(&format!(
                "messagepipeline.io/pipeline={},messagepipeline.io/role={role}",
                self.name
            )))
            .await
            .unwrap()
            .items
    }

    /// Per message id, its version in MongoDB and whether it is a tombstone.
    pub async fn stored(&self) -> Versions {
        state::stored(&self.database).await
    }

    /// Per document id in the index (through the alias), its version and whether it is a
    /// tombstone.
    pub async fn indexed(&self) -> Option<Versions> {
        state::indexed(&self.alias).await
    }

    /// What every scenario ends with: every acknowledged write is in MongoDB (at its version or
    /// later, a delete as a tombstone), and, within `timeout`, the index holds exactly MongoDB's
    /// documents at MongoDB's versions. Returns the number of documents.
    pub async fn verify(&self, acked: &Versions, timeout: Duration) -> usize {
        let stored = self.stored().await;
        let mut lost = Vec::new();
        for (id, (version, deleted)) in acked {
            match stored.get(id) {
                Some((v, d)) if v >= version && (!deleted || *d) => {}
                other => lost.push(format!(
                    "{id}: acknowledged v{version} deleted={deleted}, stored {other:?}"
                )),
            }
        }
        assert!(
            lost.is_empty(),
            "{} acknowledged writes not in MongoDB: {lost:?}",
            lost.len()
        );
        let started = Instant::now();
        let mut last = None;
        loop {
            // MongoDB again: a relay may still publish a change written before the last read.
            let stored = self.stored().await;
            let indexed = self.indexed().await;
            if indexed.as_ref() == Some(&stored) {
                return stored.len();
            }
            if started.elapsed() > timeout {
                let indexed = indexed.unwrap_or_default();
                let missing: Vec<_> = stored
                    .iter()
                    .filter(|(id, v)| indexed.get(id) != Some(v))
                    .take(10)
                    .collect();
                let extra: Vec<_> = indexed
                    .keys()
                    .filter(|id| !stored.contains_key(id))
                    .take(10)
                    .collect();
                panic!(
                    "the index does not equal MongoDB after {timeout:?}: {} stored, {} indexed; differing (first 10): {missing:?}; only in the index: {extra:?}; last seen {last:?}",
                    stored.len(),
                    indexed.len(),
                    last = last.map(|(s, i): (usize, usize)| format!("{s} stored / {i} indexed")),
                );
            }
            last = Some((stored.len(), indexed.as_ref().map_or(0, HashMap::len)));
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// Writers through one or more API bases until stopped; what they saw acknowledged.
#[derive(Debug)]
pub struct Traffic {
    stop: Arc<AtomicBool>,
    acked: Acked,
    done: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    started: Instant,
}

impl Traffic {
    /// `writers` concurrent clients of `base`, each pausing `pause` between requests.
    pub fn start(base: &str, writers: usize, pause: Duration) -> Self {
        Self::start_as(base, KEY, writers, pause)
    }

    /// [`Traffic::start`] with the API key `key`.
    pub fn start_as(base: &str, key: &str, writers: usize, pause: Duration) -> Self {
        let bases = Arc::new(RwLock::new(vec![base.to_owned()]));
        let stop = Arc::new(AtomicBool::new(false));
        let acked: Acked = Arc::new(Mutex::new(HashMap::new()));
        let done = Arc::new(AtomicU64::new(0));
        let tasks = (0..writers)
            .map(|_| {
                tokio::spawn(writer(
                    bases.clone(),
                    key.to_owned(),
                    acked.clone(),
                    stop.clone(),
                    done.clone(),
                    pause,
                ))
            })
            .collect();
        Self {
            stop,
            acked,
            done,
            tasks,
            started: Instant::now(),
        }
    }

    /// Acknowledged writes so far.
    pub fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    /// Waits until `more` further writes have been acknowledged (the API works right now).
    pub async fn progresses(&self, more: u64, timeout: Duration) {
        let target = self.done() + more;
        wait::until("acknowledged writes", timeout, || async {
            (self.done() >= target).then_some(())
        })
        .await;
    }

    /// Stops the writers; returns what was acknowledged, the count and the rate per second.
    pub async fn stop(self) -> (Versions, u64, f64) {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.unwrap();
        }
        let done = self.done.load(Ordering::Relaxed);
        let rate = done as f64 / self.started.elapsed().as_secs_f64();
        let acked = self.acked.lock().unwrap().clone();
        (acked, done, rate)
    }
}

/// Force-deletes a pod (grace period 0), as a node failure would end it.
pub async fn force_delete(install: &Install, pod: &str) {
    let _ = install
        .api::<Pod>()
        .delete(pod, &DeleteParams::default().grace_period(0))
        .await;
}

/// The status of condition `type_` on `mp` (`None` when absent).
pub fn condition<'a>(mp: &'a MessagePipeline, type_: &str) -> Option<&'a str> {
    mp.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.status.as_str())
}

/// The reason of the condition `type_`.
pub fn reason<'a>(mp: &'a MessagePipeline, type_: &str) -> Option<&'a str> {
    mp.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.reason.as_str())
}

/// Ready=True for the current generation, with `api` and `indexer` workers ready and live by
/// their Leases.
pub fn ready_with(mp: &MessagePipeline, api: i32, indexer: i32) -> bool {
    let Some(status) = &mp.status else {
        return false;
    };
    condition(mp, "Ready") == Some("True")
        && status.observed_generation == mp.metadata.generation
        && (status.workers.api.ready, status.workers.api.live) == (api, api)
        && (status.workers.indexer.ready, status.workers.indexer.live) == (indexer, indexer)
}

/// A pod the kubelet reports Ready, not being deleted.
pub fn pod_ready(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none()
        && p.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// What a timed-out wait shows: the pipeline's conditions as last seen, and each pod of the
/// install's namespace with its phase, readiness and the last lines of its log.
async fn diagnosis(install: &Install, namespace: &str, mp: Option<&MessagePipeline>) -> String {
    let mut out = String::new();
    match mp.and_then(|mp| mp.status.as_ref()) {
        Some(status) => {
            for c in &status.conditions {
                out += &format!("  {}={} {}: {}\n", c.type_, c.status, c.reason, c.message);
            }
        }
        None => out += "  the pipeline has no status\n",
    }
    let mut pods_in = vec![install.api::<Pod>()];
    if namespace != install.namespace {
        pods_in.push(install.api_in(namespace));
    }
    for pods in pods_in {
        for pod in pods
            .list(&ListParams::default())
            .await
            .map(|l| l.items)
            .unwrap_or_default()
        {
            let name = pod.metadata.name.clone().unwrap_or_default();
            let status = pod.status.unwrap_or_default();
            let ready: Vec<String> = status
                .container_statuses
                .unwrap_or_default()
                .iter()
                .map(|c| format!("{} ready={} restarts={}", c.name, c.ready, c.restart_count))
                .collect();
            out += &format!(
                "  pod {name}: {} [{}]\n",
                status.phase.unwrap_or_default(),
                ready.join(", ")
            );
            let params = kube::api::LogParams {
                tail_lines: Some(15),
                ..Default::default()
            };
            if let Ok(log) = pods.logs(&name, &params).await {
                for line in log.lines() {
                    out += &format!("    {line}\n");
                }
            }
        }
    }
    out
}

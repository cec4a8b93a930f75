//! Build: every Kubernetes child of a MessagePipeline, as pure functions of the resource.
//!
//! Owns names, labels, owner references and the shape of each child: the two worker
//! Deployments (non-root, read-only root filesystem, probes, resources, a grace period longer
//! than the indexer's flush, settings as env vars named by `pipeline_contract::worker::env`,
//! secrets only by reference), their Services, the workers' ServiceAccount and the Role that lets
//! them hold their Leases and nothing else, and a PodDisruptionBudget per Deployment.
//!
//! It never talks to the API server; `apply` sends what this returns, unchanged.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::batch::v1::{
    CronJob, CronJobSpec, Job, JobSpec, JobTemplateSpec, PodFailurePolicy,
    PodFailurePolicyOnExitCodesRequirement, PodFailurePolicyRule,
};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction, KeyToPath,
    ObjectFieldSelector, PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ResourceRequirements,
    SeccompProfile, SecretKeySelector, SecretVolumeSource, SecurityContext, Service,
    ServiceAccount, ServicePort, ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};
use messagepipeline_crd::{MessagePipeline, Resources, SecretKeyRef, TenantLimits};
use pipeline_contract::telemetry::env as telemetry_env;
use pipeline_contract::worker::{Role as WorkerRole, env, lease};

/// The HTTP port of both workers (API, probes, metrics).
pub const HTTP_PORT: i32 = 8080;
/// The api-server's `/metrics` port, apart from the API (its samples name tenants).
pub const METRICS_PORT: i32 = 9090;
/// The non-root user of the workers' image.
pub const RUN_AS_USER: i64 = 65532;
/// Where Secret files are mounted.
const SECRETS_DIR: &str = "/etc/message-pipeline";

/// Everything the operator applies for one pipeline.
#[derive(Debug, Clone, PartialEq)]
pub struct Children {
    pub service_account: ServiceAccount,
    pub role: Role,
    pub role_binding: RoleBinding,
    pub deployments: PerRole<Deployment>,
    pub services: PerRole<Service>,
    pub pdbs: PerRole<PodDisruptionBudget>,
    /// `spec.audit`'s CronJob; `None`: there is none (and one left from before is deleted).
    pub audit: Option<CronJob>,
    /// Its name, in both cases.
    pub audit_name: String,
}

/// One of a kind for each worker role, picked by role rather than by position.
#[derive(Debug, Clone, PartialEq)]
pub struct PerRole<T> {
    pub api: T,
    pub indexer: T,
}

impl<T> PerRole<T> {
    /// `make` of each role.
    pub fn new(mut make: impl FnMut(WorkerRole) -> T) -> Self {
        Self {
            api: make(WorkerRole::Api),
            indexer: make(WorkerRole::Indexer),
        }
    }

    /// Both, the api-server's first.
    pub fn iter(&self) -> std::array::IntoIter<&T, 2> {
        [&self.api, &self.indexer].into_iter()
    }
}

impl<'a, T> IntoIterator for &'a PerRole<T> {
    type Item = &'a T;
    type IntoIter = std::array::IntoIter<&'a T, 2>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// `<pipeline>-<role>`: the Deployment, Service and PDB of a role.
pub fn child_name(mp: &MessagePipeline, role: WorkerRole) -> String {
    format!("{}-{}", mp.name_any(), role.as_str())
}

/// The workers' ServiceAccount, Role and RoleBinding name.
pub fn worker_account(mp: &MessagePipeline) -> String {
    format!("{}-worker", mp.name_any())
}

/// Labels of every child, and the selector labels of a role's pods.
pub fn labels(mp: &MessagePipeline, role: Option<WorkerRole>) -> BTreeMap<String, String> {
    let mut l = BTreeMap::from([
        (
            "app.kubernetes.io/name".to_owned(),
            "message-pipeline".to_owned(),
        ),
        ("app.kubernetes.io/instance".to_owned(), mp.name_any()),
        (
            "app.kubernetes.io/managed-by".to_owned(),
            messagepipeline_crd::FIELD_MANAGER.to_owned(),
        ),
        (lease::LABEL_PIPELINE.to_owned(), mp.name_any()),
    ]);
    if let Some(role) = role {
        l.insert("app.kubernetes.io/component".into(), role.as_str().into());
        l.insert(lease::LABEL_ROLE.into(), role.as_str().into());
    }
    l
}

fn selector(mp: &MessagePipeline, role: WorkerRole) -> BTreeMap<String, String> {
    BTreeMap::from([
        (lease::LABEL_PIPELINE.to_owned(), mp.name_any()),
        (lease::LABEL_ROLE.to_owned(), role.as_str().to_owned()),
    ])
}

fn owner(mp: &MessagePipeline) -> OwnerReference {
    // A stored MessagePipeline always has a uid; `controller_owner_ref` is None only for an
    // object never sent to the API server, which the operator never sees.
    mp.controller_owner_ref(&())
        .unwrap_or_else(|| OwnerReference {
            api_version: MessagePipeline::api_version(&()).into_owned(),
            kind: MessagePipeline::kind(&()).into_owned(),
            name: mp.name_any(),
            uid: mp.uid().unwrap_or_default(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        })
}

fn meta(mp: &MessagePipeline, name: String, role: Option<WorkerRole>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: mp.namespace(),
        labels: Some(labels(mp, role)),
        owner_references: Some(vec![owner(mp)]),
        ..ObjectMeta::default()
    }
}

/// Every child of `mp`.
pub fn children(mp: &MessagePipeline) -> Children {
    let account = worker_account(mp);
    Children {
        service_account: ServiceAccount {
            metadata: meta(mp, account.clone(), None),
            automount_service_account_token: Some(true),
            ..ServiceAccount::default()
        },
        role: Role {
            metadata: meta(mp, account.clone(), None),
            // Leases cannot be limited by label; `create` cannot be limited by name. The workers
            // get Leases in their own namespace and nothing else.
            rules: Some(vec![PolicyRule {
                api_groups: Some(vec!["coordination.k8s.io".into()]),
                resources: Some(vec!["leases".into()]),
                verbs: ["get", "create", "update", "patch", "delete"]
                    .map(String::from)
                    .to_vec(),
                ..PolicyRule::default()
            }]),
        },
        role_binding: RoleBinding {
            metadata: meta(mp, account.clone(), None),
            role_ref: RoleRef {
                api_group: "rbac.authorization.k8s.io".into(),
                kind: "Role".into(),
                name: account.clone(),
            },
            subjects: Some(vec![Subject {
                kind: "ServiceAccount".into(),
                name: account,
                namespace: mp.namespace(),
                ..Subject::default()
            }]),
        },
        deployments: PerRole::new(|role| deployment(mp, role)),
        services: PerRole::new(|role| service(mp, role)),
        pdbs: PerRole::new(|role| pdb(mp, role)),
        audit: audit_cron_job(mp),
        audit_name: audit_cron_job_name(mp),
    }
}

fn plain(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        value_from: None,
    }
}

fn from_secret(name: &str, secret: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: None,
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.into(),
                key: key.into(),
                optional: Some(false),
            }),
            ..EnvVarSource::default()
        }),
    }
}

/// A Secret mounted read-only as one file; returns (volume, mount, file path).
fn secret_file(volume: &str, secret: &SecretKeyRef) -> (Volume, VolumeMount, String) {
    let dir = format!("{SECRETS_DIR}/{volume}");
    (
        Volume {
            name: volume.into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.name.clone()),
                items: Some(vec![KeyToPath {
                    key: secret.key.clone(),
                    path: secret.key.clone(),
                    mode: None,
                }]),
                default_mode: Some(0o440),
                optional: Some(false),
            }),
            ..Volume::default()
        },
        VolumeMount {
            name: volume.into(),
            mount_path: dir.clone(),
            read_only: Some(true),
            ..VolumeMount::default()
        },
        format!("{dir}/{}", secret.key),
    )
}

fn resources(spec: Option<&Resources>, role: WorkerRole) -> ResourceRequirements {
    let q = |m: &BTreeMap<String, String>| {
        m.iter()
            .map(|(k, v)| (k.clone(), Quantity(v.clone())))
            .collect::<BTreeMap<_, _>>()
    };
    match spec {
        Some(r) => ResourceRequirements {
            requests: (!r.requests.is_empty()).then(|| q(&r.requests)),
            limits: (!r.limits.is_empty()).then(|| q(&r.limits)),
            ..ResourceRequirements::default()
        },
        // Measured: the api-server peaks ~25 MiB, the indexer ~60 MiB at the default batch.
        None => {
            let memory = match role {
                WorkerRole::Api => "128Mi",
                WorkerRole::Indexer => "192Mi",
                // A page of whole documents per request on top of the indexer's clients.
                WorkerRole::Rebuild | WorkerRole::Audit => "256Mi",
            };
            ResourceRequirements {
                requests: Some(BTreeMap::from([
                    ("cpu".into(), Quantity("100m".into())),
                    ("memory".into(), Quantity(memory.into())),
                ])),
                limits: Some(BTreeMap::from([("memory".into(), Quantity(memory.into()))])),
                ..ResourceRequirements::default()
            }
        }
    }
}

fn probe(path: &str, period: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("http".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(3),
        failure_threshold: Some(3),
        ..Probe::default()
    }
}

/// `spec.api.tenantLimits` for the api-server; the overrides as the JSON array it reads.
fn tenant_limits_env(limits: &TenantLimits) -> Vec<EnvVar> {
    let mut e = vec![
        plain(env::TENANT_RATE, limits.requests_per_second.to_string()),
        plain(env::TENANT_BURST, limits.burst.to_string()),
        plain(env::TENANT_CONCURRENCY, limits.concurrency.to_string()),
    ];
    if !limits.overrides.is_empty() {
        // Serializing plain strings and numbers cannot fail.
        let json = serde_json::to_string(&limits.overrides).unwrap_or_default();
        e.push(plain(env::TENANT_OVERRIDES, json));
    }
    e
}

/// The standard `OTEL_*` variables of `spec.tracing` (none without it): the collector, the
/// service name of the role, parent-based ratio sampling, the pod as a resource attribute,
/// and the collector's headers from their Secret.
fn tracing_env(mp: &MessagePipeline, role: WorkerRole) -> Vec<EnvVar> {
    let Some(tracing) = &mp.spec.tracing else {
        return Vec::new();
    };
    let service = match role {
        WorkerRole::Api => "api-server",
        WorkerRole::Indexer => "indexer",
        WorkerRole::Rebuild => "indexer-rebuild",
        WorkerRole::Audit => "indexer-audit",
    };
    let mut e = vec![
        plain(telemetry_env::ENDPOINT, tracing.endpoint.clone()),
        plain(telemetry_env::SERVICE_NAME, service),
        plain(telemetry_env::SAMPLER, "parentbased_traceidratio"),
        plain(
            telemetry_env::SAMPLER_ARG,
            tracing.sampling_ratio.to_string(),
        ),
        plain(
            telemetry_env::RESOURCE_ATTRIBUTES,
            format!(
                "k8s.namespace.name={},k8s.pod.name=$({}),messagepipeline.name={}",
                mp.namespace().unwrap_or_default(),
                env::POD_NAME,
                mp.name_any()
            ),
        ),
    ];
    if let Some(headers) = &tracing.headers_secret_ref {
        e.push(from_secret(
            telemetry_env::HEADERS,
            &headers.name,
            &headers.key,
        ));
    }
    e
}

/// The env vars and files both workers have: identity, Kafka, search (each role with its own
/// credentials where the spec gives them).
fn common(
    mp: &MessagePipeline,
    role: WorkerRole,
    volumes: &mut Vec<Volume>,
    mounts: &mut Vec<VolumeMount>,
) -> Vec<EnvVar> {
    let spec = &mp.spec;
    // The workers serve HTTP and purge tombstones; the rebuild and audit Jobs do neither. (The
    // order of the workers' variables stays as it was: a reordered env is a new pod template, a
    // rollout.)
    let worker = matches!(role, WorkerRole::Api | WorkerRole::Indexer);
    let mut e: Vec<EnvVar> = [
        Some(plain(env::PIPELINE_NAME, mp.name_any())),
        Some(plain(
            env::PIPELINE_NAMESPACE,
            mp.namespace().unwrap_or_default(),
        )),
        Some(plain(env::PIPELINE_UID, mp.uid().unwrap_or_default())),
        Some(EnvVar {
            name: env::POD_NAME.into(),
            value: None,
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "metadata.name".into(),
                    api_version: None,
                }),
                ..EnvVarSource::default()
            }),
        }),
        worker.then(|| plain(env::HTTP_ADDR, format!("0.0.0.0:{HTTP_PORT}"))),
        Some(plain(pipeline_contract::process::LOG_FILTER_ENV, "info")),
        Some(plain(
            env::KAFKA_BOOTSTRAP_SERVERS,
            spec.kafka.bootstrap_servers.clone(),
        )),
        Some(plain(env::KAFKA_TOPIC, spec.kafka.topic.name.clone())),
        Some(plain(
            env::ELASTICSEARCH_URL,
            spec.elasticsearch.url.clone(),
        )),
        Some(plain(
            env::ELASTICSEARCH_ALIAS,
            spec.elasticsearch.alias.clone(),
        )),
        worker.then(|| {
            plain(
                env::TOMBSTONE_HORIZON_DAYS,
                spec.indexer.tombstone_horizon_days.to_string(),
            )
        }),
    ]
    .into_iter()
    .flatten()
    .collect();
    e.extend(kafka_security(mp, role, volumes, mounts));
    e.extend(tracing_env(mp, role));
    if let Some(c) = spec.elasticsearch.credentials_of(role) {
        e.push(from_secret(
            env::ELASTICSEARCH_USERNAME,
            &c.name,
            &c.username_key,
        ));
        e.push(from_secret(
            env::ELASTICSEARCH_PASSWORD,
            &c.name,
            &c.password_key,
        ));
    }
    if let Some(ca) = &spec.elasticsearch.ca_secret_ref {
        let (v, m, path) = secret_file("search-ca", ca);
        volumes.push(v);
        mounts.push(m);
        e.push(plain(env::ELASTICSEARCH_CA_CERT, path));
    }
    e
}

/// How the worker of `role` reaches a Kafka with TLS or SASL: the protocol, the CA file, its
/// SASL credentials by reference.
fn kafka_security(
    mp: &MessagePipeline,
    role: WorkerRole,
    volumes: &mut Vec<Volume>,
    mounts: &mut Vec<VolumeMount>,
) -> Vec<EnvVar> {
    let spec = &mp.spec;
    let mut e = Vec::new();
    let protocol = crate::kafka::security_protocol(&spec.kafka);
    if protocol != "plaintext" {
        e.push(plain(env::KAFKA_SECURITY_PROTOCOL, protocol));
    }
    if let Some(tls) = &spec.kafka.tls {
        let (v, m, path) = secret_file("kafka-ca", &tls.ca_secret_ref);
        volumes.push(v);
        mounts.push(m);
        e.push(plain(env::KAFKA_SSL_CA_LOCATION, path));
    }
    if let Some(sasl) = &spec.kafka.sasl {
        let c = sasl.credentials_of(role);
        e.push(plain(env::KAFKA_SASL_MECHANISM, sasl.mechanism.as_str()));
        e.push(from_secret(
            env::KAFKA_SASL_USERNAME,
            &c.name,
            &c.username_key,
        ));
        e.push(from_secret(
            env::KAFKA_SASL_PASSWORD,
            &c.name,
            &c.password_key,
        ));
    }
    e
}

/// How a worker reads MongoDB: the URI from `uri` by reference, the CA file, database and
/// collection.
fn mongodb_env(
    mp: &MessagePipeline,
    uri: &SecretKeyRef,
    volumes: &mut Vec<Volume>,
    mounts: &mut Vec<VolumeMount>,
) -> Vec<EnvVar> {
    let mongo = &mp.spec.mongodb;
    let mut e = vec![from_secret(env::MONGODB_URI, &uri.name, &uri.key)];
    if let Some(ca) = &mongo.ca_secret_ref {
        let (v, m, path) = secret_file("mongodb-ca", ca);
        volumes.push(v);
        mounts.push(m);
        e.push(plain(env::MONGODB_CA_FILE, path));
    }
    e.push(plain(env::MONGODB_DATABASE, mongo.database.clone()));
    e.push(plain(env::MONGODB_COLLECTION, mongo.collection.clone()));
    e
}

/// What differs between the roles' pods: their own env vars and files, command, replicas,
/// resources and termination grace.
struct RolePod<'a> {
    command: Vec<String>,
    replicas: i32,
    resources: Option<&'a Resources>,
    grace: i64,
}

fn role_pod<'a>(
    mp: &'a MessagePipeline,
    role: WorkerRole,
    env_vars: &mut Vec<EnvVar>,
    volumes: &mut Vec<Volume>,
    mounts: &mut Vec<VolumeMount>,
) -> RolePod<'a> {
    let spec = &mp.spec;
    let (command, replicas, resources, grace) = match role {
        WorkerRole::Api => {
            let (v, m, path) = secret_file("api-keys", &spec.api.auth.api_keys_secret_ref);
            volumes.push(v);
            mounts.push(m);
            env_vars.push(plain(env::API_KEYS_FILE, path));
            env_vars.push(plain(env::METRICS_ADDR, format!("0.0.0.0:{METRICS_PORT}")));
            env_vars.extend(tenant_limits_env(&spec.api.tenant_limits));
            let uri = &spec.mongodb.uri_secret_ref;
            env_vars.extend(mongodb_env(mp, uri, volumes, mounts));
            // Requests finish, then the relay drains for up to 10 s.
            (
                vec!["api-server".to_owned()],
                spec.api.replicas,
                spec.api.resources.as_ref(),
                30,
            )
        }
        WorkerRole::Indexer => {
            let i = &spec.indexer;
            env_vars.extend([
                plain(env::KAFKA_DLQ_TOPIC, spec.kafka.dlq_name()),
                plain(env::KAFKA_CONSUMER_GROUP, spec.kafka.consumer_group.clone()),
                plain(env::BATCH_MAX_COUNT, i.batch.max_count.to_string()),
                plain(env::BATCH_MAX_BYTES, i.batch.max_bytes.to_string()),
                plain(env::BATCH_LINGER_MS, i.batch.linger_ms.to_string()),
                plain(env::RETRY_MAX_ATTEMPTS, i.retry.max_attempts.to_string()),
                plain(env::RETRY_BACKOFF_MS, i.retry.backoff_ms.to_string()),
                plain(
                    env::BREAKER_FAILURE_THRESHOLD,
                    i.breaker.failure_threshold.to_string(),
                ),
                plain(env::BREAKER_COOLDOWN_MS, i.breaker.cooldown_ms.to_string()),
            ]);
            // Longer than a flush: linger + one bulk request timeout (30 s) + the commit.
            let grace = 45 + i64::from(i.batch.linger_ms / 1000);
            (
                vec!["indexer".to_owned(), "run".to_owned()],
                i.replicas,
                i.resources.as_ref(),
                grace,
            )
        }
        WorkerRole::Rebuild | WorkerRole::Audit => {
            let mongo = &spec.mongodb;
            let uri = mongo
                .reader_uri_secret_ref
                .as_ref()
                .unwrap_or(&mongo.uri_secret_ref);
            env_vars.extend(mongodb_env(mp, uri, volumes, mounts));
            let command = if role == WorkerRole::Rebuild {
                // `indexer rebuild --operator-swaps --generation N` (the arguments are the
                // Job's); nothing is lost by stopping it, a new pod fills the generation again.
                "rebuild"
            } else {
                // `indexer audit [--repair]`, waiting out the indexer group's lag.
                env_vars.push(plain(
                    env::KAFKA_CONSUMER_GROUP,
                    spec.kafka.consumer_group.clone(),
                ));
                "audit"
            };
            (
                vec!["indexer".to_owned(), command.to_owned()],
                1,
                spec.indexer.resources.as_ref(),
                10,
            )
        }
    };
    RolePod {
        command,
        replicas,
        resources,
        grace,
    }
}

/// The pod's: non-root, its own uid and group, the runtime's seccomp profile.
fn pod_security() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(RUN_AS_USER),
        run_as_group: Some(RUN_AS_USER),
        fs_group: Some(RUN_AS_USER),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            localhost_profile: None,
        }),
        ..PodSecurityContext::default()
    }
}

/// The container's: no privilege escalation, a read-only root, no capabilities.
fn container_security() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            add: None,
        }),
        ..SecurityContext::default()
    }
}

/// The pod of `role`, hardened, its settings by reference; and its replicas.
fn pod_template(mp: &MessagePipeline, role: WorkerRole) -> (PodTemplateSpec, i32) {
    let spec = &mp.spec;
    let (mut volumes, mut mounts) = (Vec::new(), Vec::new());
    let mut env_vars = common(mp, role, &mut volumes, &mut mounts);
    let pod = role_pod(mp, role, &mut env_vars, &mut volumes, &mut mounts);
    let template = PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels(mp, Some(role))),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            service_account_name: Some(worker_account(mp)),
            termination_grace_period_seconds: Some(pod.grace),
            security_context: Some(pod_security()),
            containers: vec![Container {
                name: role.as_str().into(),
                image: Some(spec.image.clone()),
                image_pull_policy: spec.image_pull_policy.clone(),
                command: Some(pod.command),
                env: Some(env_vars),
                resources: Some(resources(pod.resources, role)),
                security_context: Some(container_security()),
                volume_mounts: (!mounts.is_empty()).then_some(mounts),
                ..Container::default()
            }],
            volumes: (!volumes.is_empty()).then_some(volumes),
            ..PodSpec::default()
        }),
    };
    (template, pod.replicas)
}

fn deployment(mp: &MessagePipeline, role: WorkerRole) -> Deployment {
    let (mut template, replicas) = pod_template(mp, role);
    if let Some(pod) = template.spec.as_mut() {
        let container = &mut pod.containers[0];
        let port = |name: &str, container_port| ContainerPort {
            name: Some(name.into()),
            container_port,
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        };
        let mut ports = vec![port("http", HTTP_PORT)];
        if role == WorkerRole::Api {
            ports.push(port("metrics", METRICS_PORT));
        }
        container.ports = Some(ports);
        container.liveness_probe = Some(probe("/live", 10));
        container.readiness_probe = Some(probe("/ready", 5));
    }
    Deployment {
        metadata: meta(mp, child_name(mp, role), Some(role)),
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
            selector: LabelSelector {
                match_labels: Some(selector(mp, role)),
                ..LabelSelector::default()
            },
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::Int(1)),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            template,
            progress_deadline_seconds: Some(mp.spec.progress_deadline_seconds),
            ..DeploymentSpec::default()
        }),
        status: None,
    }
}

/// The name of the Job that builds `generation`.
pub fn rebuild_job_name(mp: &MessagePipeline, generation: u32) -> String {
    format!("{}-rebuild-{generation}", mp.name_any())
}

/// The Job that builds `generation` of the index: `indexer rebuild` from the workers' image,
/// as the indexer's principal with MongoDB's reader, hardened like the workers. It waits for
/// the operator to swap the alias (the operator created the index and owns the alias).
pub fn rebuild_job(mp: &MessagePipeline, generation: u32) -> Job {
    let role = WorkerRole::Rebuild;
    let (mut template, _) = pod_template(mp, role);
    if let Some(pod) = template.spec.as_mut() {
        pod.restart_policy = Some("Never".into());
        pod.containers[0].args = Some(vec![
            "--operator-swaps".into(),
            "--generation".into(),
            generation.to_string(),
        ]);
    }
    Job {
        metadata: meta(mp, rebuild_job_name(mp, generation), Some(role)),
        spec: Some(JobSpec {
            backoff_limit: Some(3),
            template,
            ..JobSpec::default()
        }),
        status: None,
    }
}

/// The audit CronJob's name: `<pipeline>-audit`.
pub fn audit_cron_job_name(mp: &MessagePipeline) -> String {
    child_name(mp, WorkerRole::Audit)
}

/// The CronJob of `spec.audit`: `indexer audit [--repair]` on its schedule, one at a time, as
/// the indexer's principal with MongoDB's reader, hardened like the workers; `None` without one.
pub fn audit_cron_job(mp: &MessagePipeline) -> Option<CronJob> {
    let audit = mp.spec.audit.as_ref()?;
    let role = WorkerRole::Audit;
    let (mut template, _) = pod_template(mp, role);
    if let Some(pod) = template.spec.as_mut() {
        pod.restart_policy = Some("Never".into());
        pod.containers[0].args = audit.repair.then(|| vec!["--repair".to_owned()]);
    }
    let job = JobSpec {
        // A failure to reach a server is tried again; a divergence found is a result.
        backoff_limit: Some(2),
        pod_failure_policy: Some(PodFailurePolicy {
            rules: vec![PodFailurePolicyRule {
                action: "FailJob".into(),
                on_exit_codes: Some(PodFailurePolicyOnExitCodesRequirement {
                    container_name: Some(role.as_str().into()),
                    operator: "In".into(),
                    // The audit did its work (its summary is on its Lease).
                    values: vec![i32::from(pipeline_contract::worker::EXIT_DIVERGED)],
                }),
                on_pod_conditions: None,
            }],
        }),
        template,
        ..JobSpec::default()
    };
    Some(CronJob {
        metadata: meta(mp, audit_cron_job_name(mp), Some(role)),
        spec: Some(CronJobSpec {
            schedule: audit.schedule.clone(),
            time_zone: audit.time_zone.clone(),
            suspend: Some(audit.suspend),
            concurrency_policy: Some("Forbid".into()),
            // A run missed by more than this (the controller down) is skipped, not made up.
            starting_deadline_seconds: Some(300),
            successful_jobs_history_limit: Some(1),
            failed_jobs_history_limit: Some(1),
            job_template: JobTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(mp, Some(role))),
                    ..ObjectMeta::default()
                }),
                spec: Some(job),
            },
        }),
        status: None,
    })
}

fn service(mp: &MessagePipeline, role: WorkerRole) -> Service {
    let port = match role {
        WorkerRole::Api => 80,
        WorkerRole::Indexer | WorkerRole::Rebuild | WorkerRole::Audit => HTTP_PORT,
    };
    Service {
        metadata: meta(mp, child_name(mp, role), Some(role)),
        spec: Some(ServiceSpec {
            selector: Some(selector(mp, role)),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port,
                target_port: Some(IntOrString::String("http".into())),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

fn pdb(mp: &MessagePipeline, role: WorkerRole) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: meta(mp, child_name(mp, role), Some(role)),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(selector(mp, role)),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use messagepipeline_crd::MessagePipelineSpec;
    use serde_json::json;

    use super::*;

    pub fn pipeline(spec: serde_json::Value) -> MessagePipeline {
        let mut mp = MessagePipeline::new(
            "orders",
            serde_json::from_value::<MessagePipelineSpec>(spec).unwrap(),
        );
        mp.metadata.namespace = Some("shop".into());
        mp.metadata.uid = Some("uid-1".into());
        mp
    }

    fn minimal() -> serde_json::Value {
        json!({
            "image": "registry.example/message-pipeline:0.1.0",
            "api": {"auth": {"apiKeysSecretRef": {"name": "api-keys", "key": "keys.yaml"}}},
            "mongodb": {"uriSecretRef": {"name": "mongodb", "key": "uri"}},
            "kafka": {"bootstrapServers": "kafka:9092"},
            "elasticsearch": {"url": "http://search:9200"}
        })
    }

    fn env_of(d: &Deployment) -> BTreeMap<String, EnvVar> {
        d.spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .containers[0]
            .env
            .clone()
            .unwrap()
            .into_iter()
            .map(|e| (e.name.clone(), e))
            .collect()
    }

    #[test]
    fn every_child_is_owned_labelled_and_named_after_the_pipeline() {
        let c = children(&pipeline(minimal()));
        let metas: Vec<&ObjectMeta> = [
            &c.service_account.metadata,
            &c.role.metadata,
            &c.role_binding.metadata,
        ]
        .into_iter()
        .chain(c.deployments.iter().map(|d| &d.metadata))
        .chain(c.services.iter().map(|s| &s.metadata))
        .chain(c.pdbs.iter().map(|p| &p.metadata))
        .collect();
        assert_eq!(metas.len(), 9);
        for m in metas {
            let owner = &m.owner_references.as_ref().unwrap()[0];
            assert_eq!(
                (owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()),
                ("MessagePipeline", "orders", "uid-1")
            );
            assert_eq!(owner.controller, Some(true));
            assert_eq!(m.namespace.as_deref(), Some("shop"));
            assert_eq!(
                m.labels.as_ref().unwrap()["messagepipeline.io/pipeline"],
                "orders"
            );
        }
        let names: Vec<String> = c
            .deployments
            .iter()
            .map(|d| d.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(names, ["orders-api", "orders-indexer"]);
    }

    #[test]
    fn workers_run_hardened_with_probes_and_a_long_enough_grace() {
        let c = children(&pipeline(minimal()));
        for d in &c.deployments {
            let pod = d.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
            let psc = pod.security_context.as_ref().unwrap();
            assert_eq!(
                (psc.run_as_non_root, psc.run_as_user),
                (Some(true), Some(65532))
            );
            let container = &pod.containers[0];
            let sc = container.security_context.as_ref().unwrap();
            assert_eq!(sc.read_only_root_filesystem, Some(true));
            assert_eq!(sc.allow_privilege_escalation, Some(false));
            assert_eq!(
                sc.capabilities.as_ref().unwrap().drop,
                Some(vec!["ALL".to_owned()])
            );
            assert!(container.liveness_probe.is_some() && container.readiness_probe.is_some());
            assert_eq!(pod.service_account_name.as_deref(), Some("orders-worker"));
            assert!(container.resources.as_ref().unwrap().limits.is_some());
        }
        let indexer = c
            .deployments
            .indexer
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap();
        assert!(indexer.termination_grace_period_seconds.unwrap() > 30 + 1);
        assert_eq!(
            indexer.containers[0].command,
            Some(vec!["indexer".to_owned(), "run".to_owned()])
        );
    }

    #[test]
    fn each_worker_gets_its_own_principal_where_the_spec_names_one() {
        let secret_of = |e: &BTreeMap<String, EnvVar>, name: &str| {
            e.get(name)
                .and_then(|v| v.value_from.as_ref())
                .and_then(|f| f.secret_key_ref.as_ref())
                .map(|r| r.name.clone())
        };
        let mut spec = minimal();
        spec["kafka"]["sasl"] = json!({"mechanism": "SCRAM-SHA-512",
            "credentialsSecretRef": {"name": "kafka-operator"},
            "indexerCredentialsSecretRef": {"name": "kafka-indexer"}});
        spec["elasticsearch"]["credentialsSecretRef"] = json!({"name": "search-operator"});
        spec["elasticsearch"]["apiCredentialsSecretRef"] = json!({"name": "search-api"});
        let c = children(&pipeline(spec));
        let (api, indexer) = (env_of(&c.deployments.api), env_of(&c.deployments.indexer));
        // (env, var, Secret): a role's own where given, else the operator's.
        let rows = [
            (&api, "KAFKA_SASL_USERNAME", "kafka-operator"),
            (&api, "KAFKA_SASL_PASSWORD", "kafka-operator"),
            (&indexer, "KAFKA_SASL_USERNAME", "kafka-indexer"),
            (&indexer, "KAFKA_SASL_PASSWORD", "kafka-indexer"),
            (&api, "ELASTICSEARCH_USERNAME", "search-api"),
            (&api, "ELASTICSEARCH_PASSWORD", "search-api"),
            (&indexer, "ELASTICSEARCH_USERNAME", "search-operator"),
            (&indexer, "ELASTICSEARCH_PASSWORD", "search-operator"),
        ];
        for (e, var, secret) in rows {
            assert_eq!(secret_of(e, var).as_deref(), Some(secret), "{var}");
        }
    }

    #[test]
    fn settings_reach_the_workers_as_contract_env_vars_and_secrets_by_reference() {
        let mut spec = minimal();
        spec["kafka"]["sasl"] =
            json!({"mechanism": "SCRAM-SHA-512", "credentialsSecretRef": {"name": "kafka-user"}});
        spec["kafka"]["tls"] = json!({"caSecretRef": {"name": "kafka-ca", "key": "ca.crt"}});
        spec["kafka"]["topic"] = json!({"name": "events", "partitions": 12});
        spec["indexer"] = json!({"batch": {"maxCount": 1000}, "breaker": {"cooldownMs": 5000}});
        let c = children(&pipeline(spec));
        let api = env_of(&c.deployments.api);
        let indexer = env_of(&c.deployments.indexer);
        assert_eq!(api["KAFKA_TOPIC"].value.as_deref(), Some("events"));
        assert_eq!(
            api["API_KEYS_FILE"].value.as_deref(),
            Some("/etc/message-pipeline/api-keys/keys.yaml")
        );
        let uri = api["MONGODB_URI"]
            .value_from
            .as_ref()
            .unwrap()
            .secret_key_ref
            .as_ref()
            .unwrap();
        assert_eq!((uri.name.as_str(), uri.key.as_str()), ("mongodb", "uri"));
        assert!(
            api["MONGODB_URI"].value.is_none(),
            "never the secret's value"
        );
        assert!(
            !indexer.contains_key("MONGODB_URI"),
            "the indexer does not get the database"
        );
        assert_eq!(
            indexer["KAFKA_DLQ_TOPIC"].value.as_deref(),
            Some("events.dlq")
        );
        assert_eq!(
            indexer["KAFKA_CONSUMER_GROUP"].value.as_deref(),
            Some("message-elasticsearch-indexer")
        );
        assert_eq!(
            indexer["INDEXER_BATCH_MAX_COUNT"].value.as_deref(),
            Some("1000")
        );
        assert_eq!(
            indexer["INDEXER_BREAKER_COOLDOWN_MS"].value.as_deref(),
            Some("5000")
        );
        assert_eq!(
            indexer["KAFKA_SECURITY_PROTOCOL"].value.as_deref(),
            Some("sasl_ssl")
        );
        assert_eq!(
            indexer["KAFKA_SASL_MECHANISM"].value.as_deref(),
            Some("SCRAM-SHA-512")
        );
        let user = indexer["KAFKA_SASL_USERNAME"]
            .value_from
            .as_ref()
            .unwrap()
            .secret_key_ref
            .as_ref()
            .unwrap();
        assert_eq!(
            (user.name.as_str(), user.key.as_str()),
            ("kafka-user", "username")
        );
        assert_eq!(
            indexer["KAFKA_SSL_CA_LOCATION"].value.as_deref(),
            Some("/etc/message-pipeline/kafka-ca/ca.crt")
        );
        assert!(
            indexer["POD_NAME"]
                .value_from
                .as_ref()
                .unwrap()
                .field_ref
                .is_some()
        );
    }

    #[test]
    fn workers_may_only_touch_leases() {
        let c = children(&pipeline(minimal()));
        let rules = c.role.rules.unwrap();
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0].resources, Some(vec!["leases".to_owned()]));
        assert!(!rules[0].verbs.contains(&"list".to_owned()));
        assert_eq!(c.role_binding.subjects.unwrap()[0].name, "orders-worker");
        for p in &c.pdbs {
            assert_eq!(
                p.spec.as_ref().unwrap().max_unavailable,
                Some(IntOrString::Int(1))
            );
        }
    }

    fn value<'a>(env: &'a BTreeMap<String, EnvVar>, name: &str) -> Option<&'a str> {
        env.get(name).and_then(|e| e.value.as_deref())
    }

    #[test]
    fn spec_tracing_becomes_the_otel_variables_of_each_role_and_none_without_it() {
        let plain = children(&pipeline(minimal()));
        for d in [&plain.deployments.api, &plain.deployments.indexer] {
            let env = env_of(d);
            assert!(
                !env.keys().any(|k| k.starts_with("OTEL_")),
                "no tracing unless asked: {env:?}"
            );
        }
        let mut spec = minimal();
        spec["tracing"] = json!({
            "endpoint": "https://collector.observability:4318",
            "samplingRatio": 0.25,
            "headersSecretRef": {"name": "otlp", "key": "headers"},
        });
        let mp = pipeline(spec);
        let c = children(&mp);
        let job = rebuild_job(&mp, 2).spec.unwrap().template.spec.unwrap();
        let job_env: BTreeMap<String, EnvVar> = job.containers[0]
            .env
            .clone()
            .unwrap()
            .into_iter()
            .map(|e| (e.name.clone(), e))
            .collect();
        for (env, service) in [
            (env_of(&c.deployments.api), "api-server"),
            (env_of(&c.deployments.indexer), "indexer"),
            (job_env, "indexer-rebuild"),
        ] {
            assert_eq!(
                value(&env, telemetry_env::ENDPOINT),
                Some("https://collector.observability:4318")
            );
            assert_eq!(value(&env, telemetry_env::SERVICE_NAME), Some(service));
            assert_eq!(
                value(&env, telemetry_env::SAMPLER),
                Some("parentbased_traceidratio")
            );
            assert_eq!(value(&env, telemetry_env::SAMPLER_ARG), Some("0.25"));
            assert_eq!(
                value(&env, telemetry_env::RESOURCE_ATTRIBUTES),
                Some(
                    "k8s.namespace.name=shop,k8s.pod.name=$(POD_NAME),messagepipeline.name=orders"
                )
            );
            let headers = env[telemetry_env::HEADERS].value_from.as_ref().unwrap();
            let secret = headers.secret_key_ref.as_ref().unwrap();
            assert_eq!(
                (secret.name.as_str(), secret.key.as_str()),
                ("otlp", "headers")
            );
        }
    }

    #[test]
    fn tenant_limits_reach_the_api_server_with_their_defaults_and_overrides() {
        let env = env_of(&children(&pipeline(minimal())).deployments.api);
        assert_eq!(value(&env, env::TENANT_RATE), Some("500"));
        assert_eq!(value(&env, env::TENANT_BURST), Some("1000"));
        assert_eq!(value(&env, env::TENANT_CONCURRENCY), Some("64"));
        assert_eq!(value(&env, env::TENANT_OVERRIDES), None);
        let mut spec = minimal();
        spec["api"]["tenantLimits"] = json!({
            "requestsPerSecond": 50,
            "overrides": [{"tenant": "big", "requestsPerSecond": 2000}],
        });
        let c = children(&pipeline(spec));
        let env = env_of(&c.deployments.api);
        assert_eq!(value(&env, env::TENANT_RATE), Some("50"));
        assert_eq!(value(&env, env::TENANT_BURST), Some("1000"), "the default");
        let overrides: serde_json::Value =
            serde_json::from_str(value(&env, env::TENANT_OVERRIDES).unwrap()).unwrap();
        assert_eq!(
            overrides,
            json!([{"tenant": "big", "requestsPerSecond": 2000}])
        );
        assert!(
            !env_of(&c.deployments.indexer).contains_key(env::TENANT_RATE),
            "the indexer takes no requests"
        );
    }

    #[test]
    fn the_rebuild_job_runs_once_hardened_as_the_pipeline_s_worker_account() {
        let mp = pipeline(minimal());
        let job = rebuild_job(&mp, 3);
        assert_eq!(job.metadata.name.as_deref(), Some("orders-rebuild-3"));
        assert_eq!(
            job.metadata.owner_references.as_ref().unwrap()[0].uid,
            "uid-1"
        );
        let spec = job.spec.unwrap();
        let pod = spec.template.spec.unwrap();
        assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
        assert_eq!(pod.service_account_name, Some(worker_account(&mp)));
        assert_eq!(pod.security_context, Some(pod_security()));
        let c = &pod.containers[0];
        assert_eq!(c.security_context, Some(container_security()));
        assert_eq!(
            (c.command.clone().unwrap(), c.args.clone().unwrap()),
            (
                vec!["indexer".to_owned(), "rebuild".to_owned()],
                vec![
                    "--operator-swaps".to_owned(),
                    "--generation".to_owned(),
                    "3".to_owned()
                ]
            )
        );
        assert!(
            c.ports.is_none() && c.readiness_probe.is_none(),
            "serves nothing"
        );
        assert_eq!(
            spec.template.metadata.unwrap().labels.unwrap()[lease::LABEL_ROLE],
            "rebuild"
        );
    }

    #[test]
    fn the_audit_runs_on_the_spec_s_schedule_one_at_a_time_and_a_divergence_is_not_retried() {
        assert_eq!(audit_cron_job(&pipeline(minimal())), None, "no spec.audit");
        let mut spec = minimal();
        spec["audit"] = serde_json::json!({"schedule": "17 3 * * *", "repair": true});
        let mp = pipeline(spec);
        let cron = audit_cron_job(&mp).unwrap();
        assert_eq!(cron.metadata.name.as_deref(), Some("orders-audit"));
        assert_eq!(
            cron.metadata.owner_references.as_ref().unwrap()[0].uid,
            "uid-1"
        );
        let spec = cron.spec.unwrap();
        assert_eq!(
            (
                spec.schedule.as_str(),
                spec.concurrency_policy.as_deref(),
                spec.suspend
            ),
            ("17 3 * * *", Some("Forbid"), Some(false))
        );
        let job = spec.job_template.spec.unwrap();
        let rule = &job.pod_failure_policy.unwrap().rules[0];
        assert_eq!(rule.action, "FailJob");
        assert_eq!(
            rule.on_exit_codes.as_ref().unwrap().values,
            [i32::from(pipeline_contract::worker::EXIT_DIVERGED)]
        );
        let pod = job.template.spec.unwrap();
        assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
        assert_eq!(pod.service_account_name, Some(worker_account(&mp)));
        assert_eq!(pod.security_context, Some(pod_security()));
        let c = &pod.containers[0];
        assert_eq!(c.security_context, Some(container_security()));
        assert_eq!(c.args.as_deref(), Some(&["--repair".to_owned()][..]));
        assert_eq!(
            spec.job_template.metadata.unwrap().labels.unwrap()[lease::LABEL_ROLE],
            "audit"
        );
    }
}

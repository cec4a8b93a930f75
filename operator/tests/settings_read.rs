//! Every env var the operator puts on a worker's Deployment is read by the process that runs
//! there: a flag of its command line (found through the subcommand the Deployment runs), or one
//! of the few the contract reads outside it (the Lease identity, the log filter). A setting the
//! operator emits and no worker reads (as `ELASTICSEARCH_CA_CERT` once was) fails here. Pure:
//! the build functions and the parsers, no rig.

use std::collections::BTreeSet;

use clap::CommandFactory;
use k8s_openapi::api::apps::v1::Deployment;
use messagepipeline_crd::{MessagePipeline, MessagePipelineSpec};
use operator::build::children;
use pipeline_contract::worker::env;
use pipeline_contract::{lease, process, telemetry};
use serde_json::json;

/// A pipeline using every optional setting: MongoDB with a private CA, Kafka over TLS with SASL
/// and a principal per worker, the search engine with credentials per worker and a private CA,
/// traces to a collector with headers from a Secret.
fn everything() -> MessagePipeline {
    let spec = json!({
        "image": "registry.example/message-pipeline:0.1.0",
        "api": {"auth": {"apiKeysSecretRef": {"name": "api-keys", "key": "keys.yaml"}}},
        "mongodb": {
            "uriSecretRef": {"name": "mongodb", "key": "uri"},
            "readerUriSecretRef": {"name": "mongodb-reader", "key": "uri"},
            "caSecretRef": {"name": "mongodb-ca", "key": "ca.crt"},
        },
        "kafka": {
            "bootstrapServers": "kafka:9093",
            "tls": {"caSecretRef": {"name": "kafka-ca", "key": "ca.crt"}},
            "sasl": {
                "mechanism": "SCRAM-SHA-512",
                "credentialsSecretRef": {"name": "kafka-user"},
                "apiCredentialsSecretRef": {"name": "kafka-api"},
                "indexerCredentialsSecretRef": {"name": "kafka-indexer"},
            },
        },
        "elasticsearch": {
            "url": "https://search:9200",
            "credentialsSecretRef": {"name": "search-user"},
            "apiCredentialsSecretRef": {"name": "search-api"},
            "indexerCredentialsSecretRef": {"name": "search-indexer"},
            "caSecretRef": {"name": "search-ca", "key": "ca.crt"},
        },
        "audit": {"schedule": "17 3 * * *", "repair": true},
        "tracing": {
            "endpoint": "http://otel-collector.observability:4318",
            "samplingRatio": 0.25,
            "headersSecretRef": {"name": "otlp", "key": "headers"},
        },
    });
    let mut mp = MessagePipeline::new(
        "orders",
        serde_json::from_value::<MessagePipelineSpec>(spec).unwrap(),
    );
    mp.metadata.namespace = Some("shop".into());
    mp.metadata.uid = Some("uid-1".into());
    mp
}

/// The container's command and the names of its env vars.
fn command_and_env(d: &Deployment) -> (Vec<String>, BTreeSet<String>) {
    pod_command_and_env(d.spec.as_ref().unwrap().template.spec.as_ref().unwrap())
}

fn pod_command_and_env(
    pod: &k8s_openapi::api::core::v1::PodSpec,
) -> (Vec<String>, BTreeSet<String>) {
    let container = &pod.containers[0];
    let env = container
        .env
        .iter()
        .flatten()
        .map(|e| e.name.clone())
        .collect();
    (container.command.clone().unwrap_or_default(), env)
}

/// The env vars the parser of `command` reads: the binary's own command, then each subcommand
/// the Deployment names.
fn read_by(mut parser: clap::Command, command: &[String]) -> BTreeSet<String> {
    for sub in command.iter().skip(1) {
        parser = parser
            .find_subcommand(sub)
            .unwrap_or_else(|| panic!("{command:?}: no subcommand {sub}"))
            .clone();
    }
    parser
        .get_arguments()
        .filter_map(|a| a.get_env())
        .map(|e| e.to_string_lossy().into_owned())
        .chain(lease::IDENTITY_ENV.map(str::to_owned))
        .chain([process::LOG_FILTER_ENV.to_owned()])
        .chain(telemetry::env::ALL.map(str::to_owned))
        .collect()
}

fn unread(d: &Deployment, binary: &str, parser: clap::Command) -> Vec<String> {
    unread_of(command_and_env(d), binary, parser)
}

fn unread_of(
    (command, env): (Vec<String>, BTreeSet<String>),
    binary: &str,
    parser: clap::Command,
) -> Vec<String> {
    assert_eq!(command.first().map(String::as_str), Some(binary));
    let read = read_by(parser, &command);
    env.difference(&read).cloned().collect()
}

#[test]
fn every_env_var_of_the_api_server_deployment_is_read_by_the_api_server() {
    let c = children(&everything());
    let unread = unread(
        &c.deployments.api,
        "api-server",
        api_server::config::Config::command(),
    );
    assert!(
        unread.is_empty(),
        "set on the api-server, read by nobody: {unread:?}"
    );
}

/// A Job's pod: every env var read by its `indexer` subcommand, MongoDB as the reader.
fn job_pod_reads_all_it_is_given(pod: &k8s_openapi::api::core::v1::PodSpec, what: &str) {
    let unread = unread_of(
        pod_command_and_env(pod),
        "indexer",
        indexer::config::Cli::command(),
    );
    assert!(
        unread.is_empty(),
        "set on the {what}, read by nobody: {unread:?}"
    );
    let container = &pod.containers[0];
    let uri = container
        .env
        .iter()
        .flatten()
        .find(|e| e.name == env::MONGODB_URI)
        .and_then(|e| e.value_from.as_ref()?.secret_key_ref.as_ref())
        .map(|s| s.name.clone());
    assert_eq!(
        uri.as_deref(),
        Some("mongodb-reader"),
        "MongoDB's reader, by reference"
    );
}

#[test]
fn every_env_var_of_the_rebuild_job_is_read_by_indexer_rebuild() {
    let job = operator::build::rebuild_job(&everything(), 2);
    job_pod_reads_all_it_is_given(&job.spec.unwrap().template.spec.unwrap(), "rebuild Job");
}

#[test]
fn every_env_var_of_the_audit_cron_job_is_read_by_indexer_audit() {
    let cron = operator::build::audit_cron_job(&everything()).expect("spec.audit is set");
    let job = cron.spec.unwrap().job_template.spec.unwrap();
    let pod = job.template.spec.unwrap();
    assert_eq!(
        pod.containers[0].command.as_deref(),
        Some(&["indexer".to_owned(), "audit".to_owned()][..])
    );
    job_pod_reads_all_it_is_given(&pod, "audit CronJob");
}

#[test]
fn every_env_var_of_the_indexer_deployment_is_read_by_indexer_run() {
    let c = children(&everything());
    let unread = unread(
        &c.deployments.indexer,
        "indexer",
        indexer::config::Cli::command(),
    );
    assert!(
        unread.is_empty(),
        "set on the indexer, read by nobody: {unread:?}"
    );
}

#[test]
fn the_pipeline_used_here_sets_every_security_setting() {
    // The two tests above prove nothing about a setting this pipeline does not make the
    // operator emit.
    let c = children(&everything());
    for d in [&c.deployments.api, &c.deployments.indexer] {
        let (_, env) = command_and_env(d);
        for name in [
            env::KAFKA_SECURITY_PROTOCOL,
            env::KAFKA_SSL_CA_LOCATION,
            env::KAFKA_SASL_MECHANISM,
            env::KAFKA_SASL_USERNAME,
            env::KAFKA_SASL_PASSWORD,
            env::ELASTICSEARCH_USERNAME,
            env::ELASTICSEARCH_PASSWORD,
            env::ELASTICSEARCH_CA_CERT,
        ] {
            assert!(env.contains(name), "{name} missing from {env:?}");
        }
    }
}

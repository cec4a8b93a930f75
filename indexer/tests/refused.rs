//! An indexer whose credentials or CA a service refuses says so where the operator and the
//! kubelet look: its worker Lease carries the refusal's reason and message, and `/ready` is
//! 503, while it keeps running (and trying) instead of exiting or looking healthy. Against the
//! rig's secured Kafka listener and secured search engine.

mod common;

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::Fixture;
use e2e::{rig::rig, unique, wait};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use pipeline_contract::worker::lease;

/// The indexer binary for `fixture` in `namespace` as pod `pod`, with `env` over the plaintext
/// defaults; (child, its `/ready` URL).
fn spawn(fixture: &Fixture, namespace: &str, pod: &str, env: &[(&str, &str)]) -> (Child, String) {
    let port = e2e::free_port();
    let mut command = Command::new(env!("CARGO_BIN_EXE_indexer"));
    command
        .arg("run")
        .env("KAFKA_BOOTSTRAP_SERVERS", rig().kafka())
        .env("KAFKA_TOPIC", &fixture.topic)
        .env("KAFKA_DLQ_TOPIC", &fixture.dlq)
        .env("KAFKA_CONSUMER_GROUP", unique("secure-refused"))
        .env("ELASTICSEARCH_URL", rig().search_url())
        .env("ELASTICSEARCH_ALIAS", fixture.layout.alias())
        .env("HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("MP_PIPELINE_NAME", "orders")
        .env("MP_PIPELINE_NAMESPACE", namespace)
        .env("POD_NAME", pod)
        .env("KUBECONFIG", rig().kubeconfig())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (k, v) in env {
        command.env(k, v);
    }
    (
        command.spawn().unwrap(),
        format!("http://127.0.0.1:{port}/ready"),
    )
}

/// (pod, env over the plaintext defaults, the reason expected, the endpoint it names).
type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str, &'a str);

/// Waits until the Lease of `pod` carries a refusal; returns its annotations.
async fn refusal_on_lease(leases: &Api<Lease>, pod: &str) -> BTreeMap<String, String> {
    let name = format!("orders-indexer-{pod}");
    wait::until(
        "a refusal on the indexer's Lease",
        Duration::from_secs(60),
        || async {
            let annotations = leases.get_opt(&name).await.ok()??.metadata.annotations?;
            annotations
                .contains_key(lease::ANNOTATION_REFUSAL)
                .then_some(annotations)
        },
    )
    .await
}

async fn ready_status(url: &str) -> u16 {
    reqwest::get(url).await.unwrap().status().as_u16()
}

fn stop(mut child: Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    assert!(child.wait().unwrap().success(), "clean exit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_kafka_login_and_an_untrusted_search_ca_reach_the_lease_and_ready() {
    let fixture = Fixture::new(None).await;
    let client = rig().kube_client().await;
    let namespace = rig().create_namespace(&client, "refused-indexer").await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), &namespace);
    let ca = rig().ca_cert();
    let secured_kafka = [
        ("KAFKA_BOOTSTRAP_SERVERS", rig().kafka_secure()),
        ("KAFKA_SECURITY_PROTOCOL", "sasl_ssl"),
        ("KAFKA_SASL_MECHANISM", "SCRAM-SHA-512"),
        ("KAFKA_SASL_USERNAME", "mp-indexer"),
        ("KAFKA_SASL_PASSWORD", "not-the-password"),
        ("KAFKA_SSL_CA_LOCATION", ca),
    ];
    // No CA file: the rig's CA is not among the system roots.
    let secured_search = [
        ("ELASTICSEARCH_URL", rig().search_secure_url()),
        ("ELASTICSEARCH_USERNAME", "mp-indexer"),
        ("ELASTICSEARCH_PASSWORD", rig().search_password("indexer")),
    ];
    let cases: [Case; 2] = [
        (
            "kafka-login",
            &secured_kafka,
            "KafkaAuthenticationFailed",
            rig().kafka_secure(),
        ),
        (
            "search-ca",
            &secured_search,
            "SearchTLSUntrusted",
            rig().search_secure_url(),
        ),
    ];
    let children: Vec<_> = cases
        .iter()
        .map(|(pod, env, _, _)| spawn(&fixture, &namespace, pod, env))
        .collect();
    for ((pod, _, reason, endpoint), (_, ready)) in cases.iter().zip(&children) {
        let annotations = refusal_on_lease(&leases, pod).await;
        assert_eq!(annotations[lease::ANNOTATION_REFUSAL], *reason, "{pod}");
        let message = &annotations[lease::ANNOTATION_REFUSAL_MESSAGE];
        assert!(message.contains(endpoint), "{pod}: {message}");
        assert!(!message.contains("not-the-password"), "{pod}: {message}");
        assert_eq!(annotations[lease::ANNOTATION_READY], "false", "{pod}");
        assert_eq!(ready_status(ready).await, 503, "{pod}: /ready");
    }
    for (child, _) in children {
        stop(child);
    }
    rig().delete_namespace(&client, &namespace).await;
}

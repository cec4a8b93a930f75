//! The operator against the rig's secured Kafka listener (SASL_SSL, SCRAM-SHA-512, ACLs): with
//! the credentials and the CA a pipeline references by Secret, as its own least-privilege
//! principal, it creates the topic and the DLQ and reads the group's lag; with a principal that
//! may not create topics, TopicsReady stays False and says so.

mod common;

use common::{Env, condition, is};
use e2e::{rig::rig, unique};
use serde_json::{Value, json};

/// A pipeline spec on the secured listener as `mp-<principal>`, with topic, DLQ and group under
/// the ACLs' prefixes.
async fn secured_spec(env: &Env, principal: &str) -> (Value, String, String) {
    let credentials = format!("kafka-{principal}");
    let user = format!("mp-{principal}");
    env.secret(
        &credentials,
        &[
            ("username", user.as_str()),
            ("password", rig().kafka_password(principal)),
        ],
    )
    .await;
    let ca = std::fs::read_to_string(rig().ca_cert()).unwrap();
    env.secret("rig-ca", &[("ca.crt", ca.as_str())]).await;
    let id = unique("s");
    let (topic, dlq) = (format!("secure-events-{id}"), format!("secure-dlq-{id}"));
    let spec = env.spec(json!({"kafka": {
        "bootstrapServers": rig().kafka_secure(),
        "topic": {"name": topic},
        "dlq": {"name": dlq},
        "consumerGroup": format!("secure-{id}"),
        "tls": {"caSecretRef": {"name": "rig-ca", "key": "ca.crt"}},
        "sasl": {"mechanism": "SCRAM-SHA-512", "credentialsSecretRef": {"name": credentials}},
    }}));
    (spec, topic, dlq)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn as_its_own_principal_the_operator_creates_the_topics_and_reads_the_lag() {
    let env = Env::new("op-secure").await;
    let (spec, topic, dlq) = secured_spec(&env, "operator").await;
    env.create("secure", spec).await;
    let mp = env
        .until("secure", "TopicsReady=True and the lag read", |mp| {
            is(mp, "TopicsReady", "True")
                && mp.status.as_ref().and_then(|s| s.consumer_lag) == Some(0)
        })
        .await;
    assert!(e2e::kafka::topic_exists(&topic), "{topic}");
    assert!(e2e::kafka::topic_exists(&dlq), "{dlq}");
    assert_eq!(e2e::kafka::partitions(&topic).len(), 3);
    assert_eq!(mp.status.unwrap().dlq_depth, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_principal_that_may_not_create_topics_topics_ready_says_so() {
    let env = Env::new("op-secure-denied").await;
    let (spec, topic, _) = secured_spec(&env, "api").await;
    env.create("denied", spec).await;
    let mp = env
        .until("denied", "TopicsReady=False with a reason", |mp| {
            is(mp, "TopicsReady", "False")
        })
        .await;
    let c = condition(&mp, "TopicsReady").unwrap();
    assert!(
        c.message.to_lowercase().contains("authoriz"),
        "the condition names the refusal: {c:?}"
    );
    assert!(!e2e::kafka::topic_exists(&topic), "{topic} created anyway");
}

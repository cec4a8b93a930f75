//! The operator against the rig's secured Kafka listener (SASL_SSL, SCRAM-SHA-512, ACLs) and its
//! secured search engine (HTTPS, basic authentication, a role per principal), with the
//! credentials and the CA a pipeline references by Secret. As its own least-privilege principal
//! it creates the topics, reads the group's lag and installs the index; a wrong password, a CA
//! that is not the servers' and a principal without the permission each leave the part's
//! condition False with a reason naming the service and the cause, and `Ready` with it.

mod common;

use common::{Env, condition, is};
use e2e::{pki::foreign_ca_pem, rig::rig, unique};
use messagepipeline_crd::MessagePipeline;
use serde_json::{Value, json};

/// How the pipeline authenticates: as which principal, with which password, trusting which CA.
struct Access<'a> {
    principal: &'a str,
    password: &'a str,
    ca: Option<&'a str>,
}

impl<'a> Access<'a> {
    fn kafka(principal: &'a str) -> Self {
        Self {
            principal,
            password: rig().kafka_password(principal),
            ca: Some(rig_ca()),
        }
    }

    fn search(principal: &'a str) -> Self {
        Self {
            principal,
            password: rig().search_password(principal),
            ca: Some(rig_ca()),
        }
    }

    /// Secrets `<prefix>-credentials` and `<prefix>-ca` (when there is a CA) for this access.
    async fn secrets(&self, env: &Env, prefix: &str) -> (Value, Option<Value>) {
        let credentials = format!("{prefix}-credentials");
        let user = format!("mp-{}", self.principal);
        env.secret(
            &credentials,
            &[("username", user.as_str()), ("password", self.password)],
        )
        .await;
        let ca = match self.ca {
            Some(pem) => {
                let name = format!("{prefix}-ca");
                env.secret(&name, &[("ca.crt", pem)]).await;
                Some(json!({"name": name, "key": "ca.crt"}))
            }
            None => None,
        };
        (json!({"name": credentials}), ca)
    }
}

fn rig_ca() -> &'static str {
    static PEM: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PEM.get_or_init(|| std::fs::read_to_string(rig().ca_cert()).unwrap())
}

/// A pipeline on the secured Kafka listener, topic, DLQ and group under the ACLs' prefixes;
/// (spec, topic, DLQ).
async fn secured_kafka(env: &Env, name: &str, access: &Access<'_>) -> (Value, String, String) {
    let (credentials, ca) = access.secrets(env, &format!("kafka-{name}")).await;
    let id = unique("s");
    let (topic, dlq) = (format!("secure-events-{id}"), format!("secure-dlq-{id}"));
    let spec = env.spec(json!({"kafka": {
        "bootstrapServers": rig().kafka_secure(),
        "topic": {"name": topic},
        "dlq": {"name": dlq},
        "consumerGroup": format!("secure-{id}"),
        "tls": {"caSecretRef": ca.expect("SASL_SSL needs a CA")},
        "sasl": {"mechanism": "SCRAM-SHA-512", "credentialsSecretRef": credentials},
    }}));
    (spec, topic, dlq)
}

/// A pipeline on the secured search engine, its alias under the roles' pattern; (spec, alias).
async fn secured_search(env: &Env, name: &str, access: &Access<'_>) -> (Value, String) {
    let (credentials, ca) = access.secrets(env, &format!("search-{name}")).await;
    let alias = unique("secure-messages");
    let mut search = json!({
        "url": rig().search_secure_url(),
        "alias": alias,
        "credentialsSecretRef": credentials,
    });
    if let Some(ca) = ca {
        search["caSecretRef"] = ca;
    }
    (env.spec(json!({ "elasticsearch": search })), alias)
}

/// Waits until condition `type_` is False with `reason` and `Ready` says the same; returns the
/// condition's message.
async fn refused(env: &Env, name: &str, type_: &str, reason: &str) -> String {
    let mp: MessagePipeline = env
        .until(name, &format!("{type_}=False {reason}"), |mp| {
            condition(mp, type_).is_some_and(|c| c.status == "False" && c.reason == reason)
        })
        .await;
    let ready = condition(&mp, "Ready").unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", reason)
    );
    condition(&mp, type_).unwrap().message.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn as_its_own_principal_the_operator_creates_the_topics_and_reads_the_lag() {
    let env = Env::new("op-secure").await;
    let (spec, topic, dlq) = secured_kafka(&env, "secure", &Access::kafka("operator")).await;
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
async fn kafka_refusals_are_topics_ready_false_with_their_reason() {
    let env = Env::new("op-kafka-refused").await;
    let cases = [
        (
            "password",
            Access {
                password: "not-the-password",
                ..Access::kafka("operator")
            },
            "KafkaAuthenticationFailed",
        ),
        (
            "ca",
            Access {
                ca: Some(foreign_ca_pem()),
                ..Access::kafka("operator")
            },
            "KafkaTLSUntrusted",
        ),
        // mp-api may write the events topic, not create topics.
        ("acl", Access::kafka("api"), "KafkaAuthorizationFailed"),
    ];
    let mut topics = Vec::new();
    for (name, access, _) in &cases {
        let (spec, topic, _) = secured_kafka(&env, name, access).await;
        env.create(name, spec).await;
        topics.push(topic);
    }
    for ((name, access, reason), topic) in cases.iter().zip(topics) {
        let message = refused(&env, name, "TopicsReady", reason).await;
        assert!(
            message.contains(rig().kafka_secure()),
            "names the endpoint: {message}"
        );
        assert!(
            !message.contains(access.password),
            "never shows the password: {message}"
        );
        assert!(!e2e::kafka::topic_exists(&topic), "{topic} created anyway");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn as_its_own_principal_the_operator_installs_the_index_over_https() {
    let env = Env::new("op-search-secure").await;
    let (spec, _alias) = secured_search(&env, "secure", &Access::search("operator")).await;
    env.create("secure", spec).await;
    env.until("secure", "IndexTemplateReady=True", |mp| {
        is(mp, "IndexTemplateReady", "True")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_refusals_are_index_template_ready_false_with_their_reason() {
    let env = Env::new("op-search-refused").await;
    let cases = [
        (
            "password",
            Access {
                password: "not-the-password",
                ..Access::search("operator")
            },
            "SearchAuthenticationFailed",
        ),
        // No CA given: the system roots do not include the rig's.
        (
            "ca",
            Access {
                ca: None,
                ..Access::search("operator")
            },
            "SearchTLSUntrusted",
        ),
        // mp-api may search, not install templates.
        ("role", Access::search("api"), "SearchAuthorizationFailed"),
    ];
    for (name, access, _) in &cases {
        let (spec, _) = secured_search(&env, name, access).await;
        env.create(name, spec).await;
    }
    for (name, access, reason) in &cases {
        let message = refused(&env, name, "IndexTemplateReady", reason).await;
        assert!(
            message.contains(rig().search_secure_url()),
            "names the endpoint: {message}"
        );
        assert!(
            !message.contains(access.password),
            "never shows the password: {message}"
        );
    }
}

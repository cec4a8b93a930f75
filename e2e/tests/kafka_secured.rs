//! The rig's secured Kafka listener does what the pipeline's least-privilege setup relies on:
//! SASL_SSL with SCRAM-SHA-512 over a certificate from the rig's CA, and ACLs per principal
//! (devstack/kafka/acls). The clients are configured through `kafka_client::Connection`, the
//! workers' own settings. The api-server's principal writes the events topic and can neither read
//! it nor write the DLQ; the indexer's reads the events with its group and writes the DLQ but not
//! the events; a wrong password and an untrusted CA fail with their own error, not a timeout.

use std::time::{Duration, Instant};

use e2e::{rig::rig, unique};
use pipeline_contract::access::Refused;
use pipeline_contract::kafka_client::{self, Connection, Refusals};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

/// How the workers would connect as `mp-<principal>`; `ca` `None` trusts the system roots only.
fn connection(principal: &str, password: &str, ca: Option<&str>) -> Connection {
    Connection {
        bootstrap_servers: rig().kafka_secure().to_owned(),
        security_protocol: Some("sasl_ssl".into()),
        sasl_mechanism: Some("SCRAM-SHA-512".into()),
        sasl_username: Some(format!("mp-{principal}")),
        sasl_password: Some(password.into()),
        ssl_ca_location: ca.map(str::to_owned),
    }
}

fn as_principal(principal: &str) -> Connection {
    connection(
        principal,
        rig().kafka_password(principal),
        Some(rig().ca_cert()),
    )
}

fn producer(c: &Connection) -> FutureProducer {
    kafka_client::idempotent(c.client_config())
        .set("message.timeout.ms", "15000")
        .create()
        .expect("producer")
}

/// A fresh events topic and DLQ under the ACLs' prefixes, made on the plaintext listener.
async fn topics() -> (String, String) {
    let id = unique("t");
    let (events, dlq) = (format!("secure-events-{id}"), format!("secure-dlq-{id}"));
    e2e::kafka::create_topics(&[(&events, 1), (&dlq, 1)]).await;
    (events, dlq)
}

async fn produce(producer: &FutureProducer, topic: &str) -> Result<(), RDKafkaErrorCode> {
    match producer
        .send(
            FutureRecord::to(topic).key("k").payload("v"),
            Duration::from_secs(20),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err((KafkaError::MessageProduction(code), _)) => Err(code),
        Err((other, _)) => panic!("producing to {topic}: {other}"),
    }
}

/// The first record of `topic` as `consumer` sees it, or the error it gets instead.
fn first_record(consumer: &BaseConsumer, topic: &str) -> Result<Vec<u8>, KafkaError> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => return Ok(m.payload().unwrap_or_default().to_vec()),
            Some(Err(e)) => return Err(e),
            None => {}
        }
    }
    panic!("neither a record nor an error from {topic} within 30 s");
}

/// A consumer in `group` of `topic`'s partition 0 from the beginning.
fn assigned(c: &Connection, group: &str, topic: &str) -> BaseConsumer {
    let consumer: BaseConsumer = c
        .client_config()
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&tpl).expect("assign");
    consumer
}

#[tokio::test]
async fn the_api_principal_writes_the_events_topic_and_nothing_else() {
    let (events, dlq) = topics().await;
    let api = as_principal("api");
    produce(&producer(&api), &events)
        .await
        .expect("the api-server's principal writes the events topic");
    assert_eq!(
        produce(&producer(&api), &dlq).await,
        Err(RDKafkaErrorCode::TopicAuthorizationFailed),
        "the api-server's principal wrote the DLQ"
    );
    // Its fetches are refused for the topic (its group lookups are refused too, as it has no
    // group either: those errors are passed over).
    let consumer = assigned(&api, &unique("secure-api"), &events);
    let mut other = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(_)) => panic!("the api-server's principal read the events topic"),
            Some(Err(KafkaError::MessageConsumption(
                RDKafkaErrorCode::TopicAuthorizationFailed,
            ))) => break,
            Some(Err(e)) => other.push(e.to_string()),
            None => {}
        }
        assert!(
            Instant::now() < deadline,
            "no TopicAuthorizationFailed within 30 s; other errors: {other:?}"
        );
    }
}

#[tokio::test]
async fn the_indexer_principal_reads_the_events_with_its_group_and_writes_only_the_dlq() {
    let (events, dlq) = topics().await;
    produce(&producer(&as_principal("api")), &events)
        .await
        .unwrap();
    let indexer = as_principal("indexer");
    let consumer = assigned(&indexer, &unique("secure-indexer"), &events);
    assert_eq!(first_record(&consumer, &events).unwrap(), b"v");
    consumer
        .commit_consumer_state(CommitMode::Sync)
        .expect("the indexer's principal commits in its group");
    produce(&producer(&indexer), &dlq)
        .await
        .expect("the indexer's principal writes the DLQ");
    assert_eq!(
        produce(&producer(&indexer), &events).await,
        Err(RDKafkaErrorCode::TopicAuthorizationFailed),
        "the indexer's principal wrote the events topic"
    );
}

/// The refusal the connections through `c` meet, as the workers' client context records it
/// (librdkafka says why a broker is unusable only in its error events: a metadata request
/// sees a mere transport failure).
fn refusal(c: &Connection) -> Refused {
    let refusals = Refusals::new(&c.bootstrap_servers);
    let client: BaseConsumer<Refusals> = c
        .client_config()
        .create_with_context(refusals.clone())
        .expect("client");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // Errors reach the context while the client is polled.
        let _ = client.poll(Duration::from_millis(500));
        if let Some(refused) = refusals.current() {
            return refused;
        }
        assert!(Instant::now() < deadline, "no refusal within 30 s");
    }
}

#[test]
fn a_wrong_password_is_an_authentication_failure() {
    let refused = refusal(&connection(
        "api",
        "not-the-password",
        Some(rig().ca_cert()),
    ));
    assert_eq!(refused.refusal.reason(), "KafkaAuthenticationFailed");
    assert_eq!(refused.endpoint, rig().kafka_secure());
    assert!(
        refused.detail.contains("SASL authentication error"),
        "{refused}"
    );
}

#[test]
fn a_certificate_from_an_untrusted_ca_fails_the_handshake() {
    let refused = refusal(&connection("api", rig().kafka_password("api"), None));
    assert_eq!(refused.refusal.reason(), "KafkaTLSUntrusted");
    assert!(
        refused.detail.contains("certificate verify failed"),
        "{refused}"
    );
}

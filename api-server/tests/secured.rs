//! The api-server on the rig's secured endpoints only, each as its own least-privilege
//! principal, configured as the operator configures it (a MongoDB URI with TLS and PLAIN
//! credentials and the CA file beside it, Kafka SASL_SSL with SCRAM and the CA file, the search engine over HTTPS with
//! basic authentication and the CA file): create, update, delete and read work, every change
//! reaches the events topic, and search answers through the engine's `mp-api` role.

mod common;

use std::time::Duration;

use common::{KEY_A, Server, Setup};
use e2e::{rig::rig, unique, wait};
use pipeline_contract::EventType;
use pipeline_contract::install::install;
use pipeline_contract::search::{IndexLayout, IndexSettings};
use pipeline_contract::search_client::SearchAccess;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crud_and_search_over_the_secured_endpoints_as_mp_api() {
    // "secure-events-...": the topic prefix mp-api may write.
    let setup = Setup::new("secure").await;
    let layout = IndexLayout::new(unique("secure-messages")).unwrap();
    let operator = SearchAccess {
        search_username: Some("mp-operator".into()),
        search_password: Some(rig().search_password("operator").into()),
        search_ca_cert: Some(rig().ca_cert().into()),
    };
    install(
        &operator.http_client(Duration::from_secs(10)).unwrap(),
        &operator.endpoint(rig().search_secure_url()),
        &layout,
        &IndexSettings {
            replicas: 0,
            ..IndexSettings::default()
        },
    )
    .await
    .expect("the index installed as mp-operator");
    // The CA as the operator gives it: a mounted file named by MONGODB_CA_FILE, not in the URI.
    let mongodb = rig().mongodb_secure_uri(Some(("api", rig().mongodb_password("api"))), None);
    let server = Server::start_with(
        &setup,
        &[
            ("MONGODB_URI", mongodb.as_str()),
            ("MONGODB_CA_FILE", rig().ca_cert()),
            ("KAFKA_BOOTSTRAP_SERVERS", rig().kafka_secure()),
            ("KAFKA_SECURITY_PROTOCOL", "sasl_ssl"),
            ("KAFKA_SASL_MECHANISM", "SCRAM-SHA-512"),
            ("KAFKA_SASL_USERNAME", "mp-api"),
            ("KAFKA_SASL_PASSWORD", rig().kafka_password("api")),
            ("KAFKA_SSL_CA_LOCATION", rig().ca_cert()),
            ("ELASTICSEARCH_URL", rig().search_secure_url()),
            ("ELASTICSEARCH_ALIAS", layout.alias()),
            ("ELASTICSEARCH_USERNAME", "mp-api"),
            ("ELASTICSEARCH_PASSWORD", rig().search_password("api")),
            ("ELASTICSEARCH_CA_CERT", rig().ca_cert()),
        ],
    )
    .await;
    let api = server.client(KEY_A);
    let created = api.create(uuid::Uuid::new_v4(), "over TLS").await;
    let id = created["id"].as_str().unwrap().to_owned();
    let patched = api
        .patch(&id, &json!({"content": "changed"}), Some("\"1\""))
        .await;
    assert_eq!(patched.status, 200, "{}", patched.body);
    let read = api.get(&format!("/v1/messages/{id}")).await;
    assert_eq!(
        (read.status.as_u16(), read.body["content"].as_str()),
        (200, Some("changed"))
    );
    let deleted = api.delete(&id, Some("\"2\"")).await;
    assert!(deleted.status.is_success(), "{}", deleted.body);
    let search = api.get("/v1/search?q=changed").await;
    assert_eq!(search.status, 200, "{}", search.body);

    let published = wait::until(
        "three events on the topic",
        Duration::from_secs(30),
        || async {
            let events = setup.events();
            (events.len() >= 3).then_some(events)
        },
    )
    .await;
    let types: Vec<EventType> = published.iter().map(|(_, e)| e.event_type()).collect();
    assert_eq!(
        types,
        [EventType::Created, EventType::Updated, EventType::Deleted]
    );
    let logs = std::fs::read_to_string(&server.log).unwrap();
    for secret in [
        rig().mongodb_password("api"),
        rig().kafka_password("api"),
        rig().search_password("api"),
    ] {
        assert!(!logs.contains(secret), "a password in the log");
    }
}

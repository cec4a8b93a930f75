//! How the workers' Kafka clients are set up, so the api-server's relay, the indexer's consumer,
//! its DLQ writer and the `dlq replay` tool connect and produce the same way (feature
//! `kafka-client`).
//!
//! The connection settings come from the flags and env vars the operator sets
//! ([`crate::worker::env`]); a producer that must neither lose nor repeat a record is idempotent
//! and waits for every in-sync replica; a record carries its key, payload and headers as given.

use std::sync::Arc;

use clap::Args;
use rdkafka::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use rdkafka::types::RDKafkaErrorCode;

use crate::access::{RefusalLog, Refused, Service, kafka_cause};
use crate::worker::env;

/// Where Kafka is and how to authenticate: the part of a worker's configuration every one of
/// its Kafka clients shares. Its `Debug` says whether a password is set, never the password.
#[derive(Clone, Default, PartialEq, Eq, Args)]
pub struct Connection {
    /// Kafka bootstrap servers.
    #[arg(long, env = env::KAFKA_BOOTSTRAP_SERVERS)]
    pub bootstrap_servers: String,
    /// `security.protocol` (plaintext, ssl, sasl_plaintext, sasl_ssl).
    #[arg(long, env = env::KAFKA_SECURITY_PROTOCOL)]
    pub security_protocol: Option<String>,
    #[arg(long, env = env::KAFKA_SASL_MECHANISM)]
    pub sasl_mechanism: Option<String>,
    #[arg(long, env = env::KAFKA_SASL_USERNAME)]
    pub sasl_username: Option<String>,
    #[arg(long, env = env::KAFKA_SASL_PASSWORD, hide_env_values = true)]
    pub sasl_password: Option<String>,
    #[arg(long, env = env::KAFKA_SSL_CA_LOCATION)]
    pub ssl_ca_location: Option<String>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("bootstrap_servers", &self.bootstrap_servers)
            .field("security_protocol", &self.security_protocol)
            .field("sasl_mechanism", &self.sasl_mechanism)
            .field("sasl_username", &self.sasl_username)
            .field(
                "sasl_password",
                &crate::access::redacted(&self.sasl_password),
            )
            .field("ssl_ca_location", &self.ssl_ca_location)
            .finish()
    }
}

impl Connection {
    /// A connection without security, as the rig and local runs use.
    pub fn plaintext(bootstrap_servers: impl Into<String>) -> Self {
        Self {
            bootstrap_servers: bootstrap_servers.into(),
            ..Self::default()
        }
    }

    /// The librdkafka settings of this connection, the ones left unset omitted.
    pub fn settings(&self) -> Vec<(&'static str, &str)> {
        let optional = [
            ("security.protocol", &self.security_protocol),
            ("sasl.mechanism", &self.sasl_mechanism),
            ("sasl.username", &self.sasl_username),
            ("sasl.password", &self.sasl_password),
            ("ssl.ca.location", &self.ssl_ca_location),
        ];
        std::iter::once(("bootstrap.servers", self.bootstrap_servers.as_str()))
            .chain(
                optional
                    .into_iter()
                    .filter_map(|(key, value)| Some((key, value.as_deref()?))),
            )
            .collect()
    }

    /// A client configuration with the connection settings; each client adds its own.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        for (key, value) in self.settings() {
            config.set(key, value);
        }
        config
    }
}

/// The settings of a producer whose acknowledged records are neither lost nor written twice by
/// its own retries: idempotence on, acknowledged by every in-sync replica.
pub const IDEMPOTENT_PRODUCER: [(&str, &str); 2] =
    [("enable.idempotence", "true"), ("acks", "all")];

/// `config` made an idempotent producer's ([`IDEMPOTENT_PRODUCER`]).
pub fn idempotent(mut config: ClientConfig) -> ClientConfig {
    for (key, value) in IDEMPOTENT_PRODUCER {
        config.set(key, value);
    }
    config
}

/// Record headers in the order given; a header without a value is kept as such.
pub fn headers<K, V>(pairs: impl IntoIterator<Item = (K, Option<V>)>) -> OwnedHeaders
where
    K: AsRef<str>,
    V: AsRef<[u8]>,
{
    let pairs = pairs.into_iter();
    let mut headers = OwnedHeaders::new_with_capacity(pairs.size_hint().0);
    for (key, value) in pairs {
        headers = headers.insert(Header {
            key: key.as_ref(),
            value: value.as_ref().map(AsRef::as_ref),
        });
    }
    headers
}

/// A record for `topic` with the key and payload it has (either may be absent) and `headers`.
pub fn record<'a>(
    topic: &'a str,
    key: Option<&'a [u8]>,
    payload: Option<&'a [u8]>,
    headers: OwnedHeaders,
) -> FutureRecord<'a, [u8], [u8]> {
    let mut record = FutureRecord::to(topic).headers(headers);
    if let Some(key) = key {
        record = record.key(key);
    }
    if let Some(payload) = payload {
        record = record.payload(payload);
    }
    record
}

/// A Kafka client's context that records the refusals its connections meet in a
/// [`RefusalLog`] (librdkafka calls it with every error; the log says each refusal once);
/// other errors are logged as librdkafka's default context does.
#[derive(Debug, Clone)]
pub struct Refusals {
    endpoint: Arc<str>,
    log: RefusalLog,
}

impl Refusals {
    /// Records into a log of its own.
    pub fn new(endpoint: &str) -> Self {
        Self::into_log(endpoint, RefusalLog::default())
    }

    /// Records into `log`, which the worker's other clients share.
    pub fn into_log(endpoint: &str, log: RefusalLog) -> Self {
        Self {
            endpoint: endpoint.into(),
            log,
        }
    }

    /// The servers the client connects to, as refusals name them.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Records `code` when it is a refusal; whether it was.
    pub fn observe(&self, code: RDKafkaErrorCode, message: &str) -> bool {
        let Some(cause) = kafka_cause(code, message) else {
            return false;
        };
        self.log.record(Refused::new(
            Service::Kafka,
            cause,
            &*self.endpoint,
            message,
        ));
        true
    }

    /// Records `error` when it is a refusal; whether it was.
    pub fn observe_error(&self, error: &KafkaError) -> bool {
        error
            .rdkafka_error_code()
            .is_some_and(|code| self.observe(code, &error.to_string()))
    }

    /// The refusal met within [`crate::access::REFUSAL_MEMORY`], if any.
    pub fn current(&self) -> Option<Refused> {
        self.log.current()
    }
}

impl ClientContext for Refusals {
    fn error(&self, error: KafkaError, reason: &str) {
        let code = error.rdkafka_error_code().unwrap_or(RDKafkaErrorCode::Fail);
        if !self.observe(code, reason) {
            tracing::warn!(endpoint = %self.endpoint, %error, reason, "Kafka client error");
        }
    }
}

impl ConsumerContext for Refusals {}

#[cfg(test)]
mod tests {
    use rdkafka::message::Headers;

    use super::*;

    #[test]
    fn debug_never_shows_the_sasl_password() {
        let c = Connection {
            sasl_username: Some("mp-indexer".into()),
            sasl_password: Some("s3cret-sasl".into()),
            ..Connection::plaintext("kafka:9093")
        };
        let shown = format!("{c:?}");
        assert!(!shown.contains("s3cret-sasl"), "{shown}");
        assert!(
            shown.contains("mp-indexer") && shown.contains("<redacted>"),
            "{shown}"
        );
    }

    #[test]
    fn a_connection_sets_what_it_has_and_nothing_else() {
        let plain = Connection::plaintext("k:9092");
        assert_eq!(plain.settings(), [("bootstrap.servers", "k:9092")]);
        let secured = Connection {
            security_protocol: Some("sasl_ssl".into()),
            sasl_mechanism: Some("SCRAM-SHA-512".into()),
            sasl_username: Some("indexer".into()),
            sasl_password: Some("secret".into()),
            ssl_ca_location: Some("/etc/kafka/ca.crt".into()),
            ..plain
        };
        let config = secured.client_config();
        for (key, value) in secured.settings() {
            assert_eq!(config.get(key), Some(value), "{key}");
        }
        assert_eq!(secured.settings().len(), 6);
        let producer = idempotent(config);
        assert_eq!(producer.get("enable.idempotence"), Some("true"));
        assert_eq!(producer.get("acks"), Some("all"));
    }

    #[test]
    fn a_refusal_is_kept_with_its_endpoint_and_other_errors_are_not() {
        let refusals = Refusals::new("kafka:9093");
        assert!(!refusals.observe(RDKafkaErrorCode::AllBrokersDown, "down"));
        assert_eq!(refusals.current(), None);
        assert!(refusals.observe(
            RDKafkaErrorCode::Authentication,
            "SASL authentication error"
        ));
        let refused = refusals.current().unwrap();
        assert_eq!(refused.refusal.reason(), "KafkaAuthenticationFailed");
        assert_eq!(refused.endpoint, "kafka:9093");
        assert!(refused.to_string().contains("SASL authentication error"));
        // A later refusal replaces it; the clone shares the record.
        assert!(
            refusals
                .clone()
                .observe(RDKafkaErrorCode::TopicAuthorizationFailed, "topic")
        );
        assert_eq!(
            refusals.current().unwrap().refusal.reason(),
            "KafkaAuthorizationFailed"
        );
    }

    #[test]
    fn headers_keep_their_order_and_absent_values() {
        let h = headers([("a", Some("1")), ("b", None), ("a", Some("2"))]);
        let seen: Vec<(&str, Option<&[u8]>)> = h.iter().map(|h| (h.key, h.value)).collect();
        assert_eq!(
            seen,
            [("a", Some(&b"1"[..])), ("b", None), ("a", Some(&b"2"[..]))]
        );
    }
}

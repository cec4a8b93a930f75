//! Why a service refused a client: a wrong credential, a certificate from a CA the client does not
//! trust, a missing permission. The worker's log, its Lease and the operator's conditions all say
//! it in these words. A refusal is not an outage: no retry ends it until someone changes a
//! password, a CA or an ACL, so it is reported as what it is, never as a retry loop that looks
//! healthy.
//!
//! The words are one [`Refusal`] per service and cause, whose [`Refusal::reason`] is a condition's
//! reason (`KafkaAuthenticationFailed`, `SearchTLSUntrusted`, ...). What each client library says
//! is turned into a cause here too, next to the settings of that client: [`kafka_cause`] (feature
//! `kafka-client`), [`search_status_cause`] and [`search_error_cause`] (feature `installer`).

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// What a `Debug` of settings shows for a secret: that one is set, never its value.
pub fn redacted(secret: &Option<String>) -> Option<&'static str> {
    secret.as_ref().map(|_| "<redacted>")
}

/// The services a worker or the operator connects to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Service {
    Kafka,
    Search,
    MongoDb,
}

impl Service {
    /// The word a reason starts with.
    const fn word(self) -> &'static str {
        match self {
            Self::Kafka => "Kafka",
            Self::Search => "Search",
            Self::MongoDb => "MongoDB",
        }
    }

    /// How a log line names it.
    const fn name(self) -> &'static str {
        match self {
            Self::Kafka => "Kafka",
            Self::Search => "the search engine",
            Self::MongoDb => "MongoDB",
        }
    }
}

/// Why a service refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Cause {
    /// The credentials were refused (wrong user or password).
    AuthenticationFailed,
    /// The server's certificate does not chain to a CA the client trusts.
    TlsUntrusted,
    /// The principal is known but may not do what was asked (an ACL, a role).
    AuthorizationFailed,
}

impl Cause {
    const ALL: [Self; 3] = [
        Self::AuthenticationFailed,
        Self::TlsUntrusted,
        Self::AuthorizationFailed,
    ];

    const fn word(self) -> &'static str {
        match self {
            Self::AuthenticationFailed => "AuthenticationFailed",
            Self::TlsUntrusted => "TLSUntrusted",
            Self::AuthorizationFailed => "AuthorizationFailed",
        }
    }

    const fn words(self) -> &'static str {
        match self {
            Self::AuthenticationFailed => "the credentials were refused",
            Self::TlsUntrusted => "its certificate is not from a trusted CA",
            Self::AuthorizationFailed => "the principal is not allowed",
        }
    }
}

/// One service refusing for one cause: what a condition's reason names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Refusal {
    pub service: Service,
    pub cause: Cause,
}

impl Refusal {
    pub const fn new(service: Service, cause: Cause) -> Self {
        Self { service, cause }
    }

    /// The condition reason: service and cause in one CamelCase word.
    pub fn reason(self) -> String {
        format!("{}{}", self.service.word(), self.cause.word())
    }

    /// The refusal a reason names (`None` for any other word).
    pub fn parse(reason: &str) -> Option<Self> {
        [Service::Kafka, Service::Search, Service::MongoDb]
            .into_iter()
            .flat_map(|s| Cause::ALL.map(|c| Self::new(s, c)))
            .find(|r| r.reason() == reason)
    }
}

/// A refusal as it happened: by which endpoint, and what the client library said (never a
/// credential: the libraries' messages name the mechanism and the user at most).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub refusal: Refusal,
    pub endpoint: String,
    pub detail: String,
}

impl Refused {
    pub fn new(
        service: Service,
        cause: Cause,
        endpoint: impl Into<String>,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            refusal: Refusal::new(service, cause),
            endpoint: endpoint.into(),
            detail: detail.into(),
        }
    }
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} at {} refused the connection: {}: {}",
            self.refusal.service.name(),
            self.endpoint,
            self.refusal.cause.words(),
            self.detail
        )
    }
}

/// How long a refusal counts after it was last met. Clients meet a refusal again at every
/// reconnect or request (librdkafka at most `reconnect.backoff.max.ms`, 10 s, apart; the
/// indexer with every batch or probe), so one older than this was fixed (an ACL added) or is no
/// longer tried.
pub const REFUSAL_MEMORY: Duration = Duration::from_secs(60);

/// The refusals a worker's clients meet, shared by the clients that meet them and whatever
/// reports them (`/ready`, the worker's Lease): the last one, while it is recent.
#[derive(Debug, Clone, Default)]
pub struct RefusalLog {
    last: Arc<Mutex<Option<(Instant, Refused)>>>,
}

impl RefusalLog {
    /// Keeps `refused` as the last refusal, logging it (one error line naming the endpoint and
    /// the cause) when it starts one: another refusal than the last, or the first after a quiet
    /// [`REFUSAL_MEMORY`]. Returns whether it started one.
    pub fn record(&self, refused: Refused) -> bool {
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        let starts = last.as_ref().is_none_or(|(at, r)| {
            r.refusal != refused.refusal
                || r.endpoint != refused.endpoint
                || at.elapsed() > REFUSAL_MEMORY
        });
        if starts {
            tracing::error!(refusal = %refused.refusal.reason(), "{refused}");
        }
        *last = Some((Instant::now(), refused));
        starts
    }

    /// The refusal met within [`REFUSAL_MEMORY`], if any.
    pub fn current(&self) -> Option<Refused> {
        let last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        last.as_ref()
            .filter(|(at, _)| at.elapsed() <= REFUSAL_MEMORY)
            .map(|(_, r)| r.clone())
    }
}

/// The cause of a librdkafka error, when it is a refusal: SASL authentication, a certificate that
/// fails verification, an ACL. Other SSL errors (a plaintext port, a handshake cut) are not.
#[cfg(feature = "kafka-client")]
pub fn kafka_cause(code: rdkafka::types::RDKafkaErrorCode, message: &str) -> Option<Cause> {
    use rdkafka::types::RDKafkaErrorCode as Code;
    match code {
        Code::Authentication | Code::SaslAuthenticationFailed => Some(Cause::AuthenticationFailed),
        Code::SSL if message.contains("certificate verify failed") => Some(Cause::TlsUntrusted),
        Code::TopicAuthorizationFailed
        | Code::GroupAuthorizationFailed
        | Code::ClusterAuthorizationFailed
        | Code::TransactionalIdAuthorizationFailed
        | Code::DelegationTokenAuthorizationFailed => Some(Cause::AuthorizationFailed),
        _ => None,
    }
}

/// The cause of a failed MongoDB command or connection, from the server's error code and the
/// error's text (causes included): 18 `AuthenticationFailed` and 13 `Unauthorized` as MongoDB
/// sends them; FerretDB 1.x passes on PostgreSQL's words instead (`password authentication
/// failed`, `permission denied`); an untrusted certificate is rustls' `invalid peer
/// certificate`.
pub fn mongodb_cause(code: Option<i32>, text: &str) -> Option<Cause> {
    match code {
        Some(18) => return Some(Cause::AuthenticationFailed),
        Some(13) => return Some(Cause::AuthorizationFailed),
        _ => {}
    }
    if text.contains("password authentication failed") || text.contains("Authentication failed") {
        Some(Cause::AuthenticationFailed)
    } else if text.contains("permission denied") {
        Some(Cause::AuthorizationFailed)
    } else if text.contains("invalid peer certificate") {
        Some(Cause::TlsUntrusted)
    } else {
        None
    }
}

/// The cause an HTTP answer of the search engine stands for: 401 authentication, 403 a role
/// that does not allow the request.
pub const fn search_status_cause(status: u16) -> Option<Cause> {
    match status {
        401 => Some(Cause::AuthenticationFailed),
        403 => Some(Cause::AuthorizationFailed),
        _ => None,
    }
}

/// The cause of a failed request to the search engine, when it is a certificate the client does
/// not trust (rustls says `invalid peer certificate` somewhere in the error's chain).
#[cfg(feature = "installer")]
pub fn search_error_cause(error: &reqwest::Error) -> Option<Cause> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if e.to_string().contains("invalid peer certificate") {
            return Some(Cause::TlsUntrusted);
        }
        source = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_redacted_secret_says_only_whether_it_is_set() {
        assert_eq!(redacted(&Some("hunter2".into())), Some("<redacted>"));
        assert_eq!(redacted(&None), None);
    }

    #[test]
    fn every_reason_names_its_service_and_cause_and_parses_back() {
        let all: Vec<Refusal> = [Service::Kafka, Service::Search, Service::MongoDb]
            .into_iter()
            .flat_map(|s| Cause::ALL.map(|c| Refusal::new(s, c)))
            .collect();
        let reasons: std::collections::BTreeSet<String> = all.iter().map(|r| r.reason()).collect();
        assert_eq!(reasons.len(), 9, "{reasons:?}");
        for r in &all {
            assert_eq!(Refusal::parse(&r.reason()), Some(*r));
        }
        for (r, want) in [
            (
                Refusal::new(Service::Kafka, Cause::AuthenticationFailed),
                "KafkaAuthenticationFailed",
            ),
            (
                Refusal::new(Service::Search, Cause::TlsUntrusted),
                "SearchTLSUntrusted",
            ),
            (
                Refusal::new(Service::MongoDb, Cause::AuthorizationFailed),
                "MongoDBAuthorizationFailed",
            ),
        ] {
            assert_eq!(r.reason(), want);
        }
        assert_eq!(Refusal::parse("KafkaError"), None);
        assert_eq!(Refusal::parse(""), None);
    }

    #[test]
    fn a_refusal_reads_as_endpoint_and_cause() {
        let r = Refused {
            refusal: Refusal::new(Service::Search, Cause::AuthenticationFailed),
            endpoint: "https://search:9200".into(),
            detail: "401 Unauthorized".into(),
        };
        assert_eq!(
            r.to_string(),
            "the search engine at https://search:9200 refused the connection: the credentials were refused: 401 Unauthorized"
        );
    }

    #[test]
    fn a_log_keeps_the_last_refusal_and_says_when_one_starts() {
        let log = RefusalLog::default();
        assert_eq!(log.current(), None);
        let refused = |cause, endpoint: &str| Refused {
            refusal: Refusal::new(Service::Kafka, cause),
            endpoint: endpoint.into(),
            detail: "d".into(),
        };
        assert!(log.record(refused(Cause::AuthenticationFailed, "k:1")));
        assert!(
            !log.clone()
                .record(refused(Cause::AuthenticationFailed, "k:1")),
            "the same again"
        );
        assert!(
            log.record(refused(Cause::AuthenticationFailed, "k:2")),
            "another endpoint"
        );
        assert!(
            log.record(refused(Cause::AuthorizationFailed, "k:2")),
            "another cause"
        );
        assert_eq!(
            log.current(),
            Some(refused(Cause::AuthorizationFailed, "k:2"))
        );
    }

    #[test]
    fn http_statuses_that_are_refusals() {
        assert_eq!(search_status_cause(401), Some(Cause::AuthenticationFailed));
        assert_eq!(search_status_cause(403), Some(Cause::AuthorizationFailed));
        for other in [200, 400, 404, 409, 429, 500, 503] {
            assert_eq!(search_status_cause(other), None, "{other}");
        }
    }

    #[test]
    fn mongodb_errors_that_are_refusals() {
        let rows = [
            (Some(18), "", Some(Cause::AuthenticationFailed)),
            (Some(13), "", Some(Cause::AuthorizationFailed)),
            (
                None,
                "Command failed: failed to connect to `user=mp-api database=ferretdb_secure`: 127.0.0.1:54329 (127.0.0.1): failed SASL auth: FATAL: password authentication failed for user \"mp-api\" (SQLSTATE 28P01)",
                Some(Cause::AuthenticationFailed),
            ),
            (
                Some(1),
                "ERROR: permission denied for table messages_0a1b (SQLSTATE 42501)",
                Some(Cause::AuthorizationFailed),
            ),
            (
                None,
                "Server selection timeout: ... invalid peer certificate: UnknownIssuer",
                Some(Cause::TlsUntrusted),
            ),
            (
                None,
                "Server selection timeout: No available servers. Connection refused",
                None,
            ),
            (Some(11000), "E11000 duplicate key error", None),
        ];
        for (code, text, want) in rows {
            assert_eq!(mongodb_cause(code, text), want, "{code:?} {text}");
        }
    }

    #[cfg(feature = "kafka-client")]
    #[test]
    fn librdkafka_codes_that_are_refusals() {
        use rdkafka::types::RDKafkaErrorCode as Code;
        let rows = [
            (
                Code::Authentication,
                "SASL authentication error: Authentication failed during authentication due to invalid credentials with SASL mechanism SCRAM-SHA-512",
                Some(Cause::AuthenticationFailed),
            ),
            (
                Code::SaslAuthenticationFailed,
                "",
                Some(Cause::AuthenticationFailed),
            ),
            (
                Code::SSL,
                "SSL handshake failed: error:0A000086:SSL routines::certificate verify failed: broker certificate could not be verified",
                Some(Cause::TlsUntrusted),
            ),
            (
                Code::SSL,
                "SSL handshake failed: Disconnected: connecting to a PLAINTEXT broker listener?",
                None,
            ),
            (
                Code::TopicAuthorizationFailed,
                "",
                Some(Cause::AuthorizationFailed),
            ),
            (
                Code::GroupAuthorizationFailed,
                "",
                Some(Cause::AuthorizationFailed),
            ),
            (
                Code::ClusterAuthorizationFailed,
                "",
                Some(Cause::AuthorizationFailed),
            ),
            (Code::BrokerTransportFailure, "Connection refused", None),
            (Code::AllBrokersDown, "", None),
            (Code::OperationTimedOut, "", None),
        ];
        for (code, message, want) in rows {
            assert_eq!(kafka_cause(code, message), want, "{code:?} {message}");
        }
    }
}

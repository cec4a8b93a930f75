//! Dead-letter records: the original key, value and headers plus the headers below, which say
//! where the record came from, why it failed and how often it was re-driven.

use std::fmt;
use std::str::FromStr;

use crate::time::Timestamp;

/// The DLQ of a topic unless configured otherwise: `<topic>.dlq`.
pub fn default_dlq_topic(topic: &str) -> String {
    format!("{topic}.dlq")
}

/// Header names added to a dead-lettered record.
pub mod header {
    pub const SOURCE_TOPIC: &str = "dlq-source-topic";
    pub const SOURCE_PARTITION: &str = "dlq-source-partition";
    pub const SOURCE_OFFSET: &str = "dlq-source-offset";
    pub const ERROR_CLASS: &str = "dlq-error-class";
    pub const ERROR_MESSAGE: &str = "dlq-error-message";
    pub const ATTEMPTS: &str = "dlq-attempts";
    pub const FIRST_FAILURE: &str = "dlq-first-failure";
    pub const REDRIVE_COUNT: &str = "dlq-redrive-count";

    pub const ALL: [&str; 8] = [
        SOURCE_TOPIC,
        SOURCE_PARTITION,
        SOURCE_OFFSET,
        ERROR_CLASS,
        ERROR_MESSAGE,
        ATTEMPTS,
        FIRST_FAILURE,
        REDRIVE_COUNT,
    ];
}

/// Why a record can never be applied as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ErrorClass {
    /// Not JSON, not an envelope, or a payload of the wrong shape.
    Undecodable,
    /// An envelope whose `type` this contract does not know.
    UnknownType,
    /// A decodable event without `version`: it cannot be written with an external version.
    MissingVersion,
    /// The search engine refused the document itself (mapping or parsing error).
    MappingRejected,
    /// Item-level retryable failures (429/5xx) that outlasted the retry bound.
    RetriesExhausted,
}

impl ErrorClass {
    pub const ALL: [ErrorClass; 5] = [
        Self::Undecodable,
        Self::UnknownType,
        Self::MissingVersion,
        Self::MappingRejected,
        Self::RetriesExhausted,
    ];

    /// The `dlq-error-class` header value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Undecodable => "undecodable",
            Self::UnknownType => "unknown-type",
            Self::MissingVersion => "missing-version",
            Self::MappingRejected => "mapping-rejected",
            Self::RetriesExhausted => "retries-exhausted",
        }
    }
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown DLQ error class {0:?}")]
pub struct UnknownErrorClass(pub String);

impl FromStr for ErrorClass {
    type Err = UnknownErrorClass;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| UnknownErrorClass(s.to_owned()))
    }
}

/// The DLQ headers of one dead-lettered record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DlqHeaders {
    pub source_topic: String,
    pub source_partition: i32,
    pub source_offset: i64,
    pub error_class: ErrorClass,
    pub error_message: String,
    pub attempts: u32,
    pub first_failure: Timestamp,
    pub redrive_count: u32,
}

/// A DLQ header that is missing or unreadable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("DLQ header {name}: {problem}")]
pub struct DlqHeaderError {
    pub name: &'static str,
    pub problem: String,
}

impl DlqHeaders {
    /// Name/value pairs, in the order of [`header::ALL`].
    pub fn pairs(&self) -> Vec<(&'static str, String)> {
        vec![
            (header::SOURCE_TOPIC, self.source_topic.clone()),
            (header::SOURCE_PARTITION, self.source_partition.to_string()),
            (header::SOURCE_OFFSET, self.source_offset.to_string()),
            (header::ERROR_CLASS, self.error_class.to_string()),
            (header::ERROR_MESSAGE, self.error_message.clone()),
            (header::ATTEMPTS, self.attempts.to_string()),
            (header::FIRST_FAILURE, self.first_failure.to_string()),
            (header::REDRIVE_COUNT, self.redrive_count.to_string()),
        ]
    }

    /// Reads the DLQ headers of a record, ignoring any other header; the last occurrence of a
    /// name wins, so a re-driven record that was dead-lettered again reads its latest failure.
    pub fn parse<'a>(
        pairs: impl IntoIterator<Item = (&'a str, Option<&'a [u8]>)>,
    ) -> Result<Self, DlqHeaderError> {
        let mut found: [Option<String>; 8] = Default::default();
        for (name, value) in pairs {
            if let Some(i) = header::ALL.iter().position(|h| *h == name) {
                found[i] = Some(String::from_utf8_lossy(value.unwrap_or_default()).into_owned());
            }
        }
        let get = |i: usize| {
            found[i].clone().ok_or(DlqHeaderError {
                name: header::ALL[i],
                problem: "missing".into(),
            })
        };
        fn parsed<T: FromStr>(name: &'static str, value: String) -> Result<T, DlqHeaderError>
        where
            T::Err: fmt::Display,
        {
            value.parse().map_err(|e: T::Err| DlqHeaderError {
                name,
                problem: format!("{value:?}: {e}"),
            })
        }
        Ok(Self {
            source_topic: get(0)?,
            source_partition: parsed(header::SOURCE_PARTITION, get(1)?)?,
            source_offset: parsed(header::SOURCE_OFFSET, get(2)?)?,
            error_class: parsed(header::ERROR_CLASS, get(3)?)?,
            error_message: get(4)?,
            attempts: parsed(header::ATTEMPTS, get(5)?)?,
            first_failure: parsed(header::FIRST_FAILURE, get(6)?)?,
            // A record dead-lettered for the first time may predate the redrive header.
            redrive_count: found[7]
                .clone()
                .map_or(Ok(0), |v| parsed(header::REDRIVE_COUNT, v))?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_classes_have_their_contract_names() {
        let names: Vec<_> = ErrorClass::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(
            names,
            [
                "undecodable",
                "unknown-type",
                "missing-version",
                "mapping-rejected",
                "retries-exhausted"
            ]
        );
        for c in ErrorClass::ALL {
            assert_eq!(c.as_str().parse::<ErrorClass>().unwrap(), c);
        }
        assert!("timeout".parse::<ErrorClass>().is_err());
    }

    #[test]
    fn dlq_topic_default_appends_suffix() {
        assert_eq!(
            default_dlq_topic("message-events-v1-prod"),
            "message-events-v1-prod.dlq"
        );
    }

    #[test]
    fn headers_round_trip_and_latest_wins() {
        let h = DlqHeaders {
            source_topic: "t".into(),
            source_partition: 2,
            source_offset: 41,
            error_class: ErrorClass::MappingRejected,
            error_message: "failed to parse field [metadata]".into(),
            attempts: 1,
            first_failure: Timestamp::now(),
            redrive_count: 0,
        };
        let mut pairs = vec![("message-id", "x:1".to_owned())];
        pairs.extend(h.pairs());
        pairs.push((header::REDRIVE_COUNT, "3".into()));
        let parsed =
            DlqHeaders::parse(pairs.iter().map(|(n, v)| (*n, Some(v.as_bytes())))).unwrap();
        assert_eq!(
            parsed,
            DlqHeaders {
                redrive_count: 3,
                ..h
            }
        );
    }

    #[test]
    fn parse_names_the_bad_header() {
        let pairs = [(header::SOURCE_TOPIC, "t"), (header::SOURCE_PARTITION, "x")];
        let err =
            DlqHeaders::parse(pairs.iter().map(|(n, v)| (*n, Some(v.as_bytes())))).unwrap_err();
        assert_eq!(err.name, header::SOURCE_PARTITION);
    }
}

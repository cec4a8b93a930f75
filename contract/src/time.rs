use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, SecondsFormat, SubsecRound, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A point in time as every component stores and sends it.
///
/// Truncated to whole milliseconds on construction, because that is what MongoDB dates and the
/// search engine's `date` type keep: a value read back from either compares equal to the one
/// written. Encoded as RFC 3339 in UTC with exactly three fractional digits and `Z`; decoding
/// accepts any RFC 3339 offset and precision (the seed's examples have none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(DateTime<Utc>);

impl Timestamp {
    /// The current time, truncated to milliseconds.
    pub fn now() -> Self {
        Self::from(Utc::now())
    }

    /// Milliseconds since the Unix epoch.
    pub fn timestamp_millis(&self) -> i64 {
        self.0.timestamp_millis()
    }

    /// From milliseconds since the Unix epoch; `None` when out of range.
    pub fn from_millis(millis: i64) -> Option<Self> {
        DateTime::from_timestamp_millis(millis).map(Self)
    }

    /// The underlying UTC time.
    pub fn as_datetime(&self) -> DateTime<Utc> {
        self.0
    }
}

impl From<DateTime<Utc>> for Timestamp {
    fn from(value: DateTime<Utc>) -> Self {
        Self(value.trunc_subsecs(3))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.to_rfc3339_opts(SecondsFormat::Millis, true))
    }
}

impl FromStr for Timestamp {
    type Err = chrono::ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DateTime::parse_from_rfc3339(s).map(|t| Self::from(t.with_timezone(&Utc)))
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse()
            .map_err(|e| serde::de::Error::custom(format!("invalid RFC 3339 time {text:?}: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_utc_with_milliseconds_and_z() {
        let cases = [
            ("2023-08-15T10:30:00Z", "2023-08-15T10:30:00.000Z"),
            ("2023-08-15T10:30:00.123456Z", "2023-08-15T10:30:00.123Z"),
            ("2023-08-15T12:30:00.5+02:00", "2023-08-15T10:30:00.500Z"),
            ("2023-08-15T10:30:00.999999999Z", "2023-08-15T10:30:00.999Z"),
        ];
        for (input, expected) in cases {
            let t: Timestamp = input.parse().unwrap();
            assert_eq!(t.to_string(), expected, "input {input}");
            assert_eq!(serde_json::to_value(t).unwrap(), expected);
        }
    }

    #[test]
    fn rejects_what_is_not_rfc3339() {
        for input in [
            "",
            "2023-08-15",
            "2023-08-15 10:30:00",
            "yesterday",
            "2023-13-01T00:00:00Z",
        ] {
            assert!(
                input.parse::<Timestamp>().is_err(),
                "{input:?} should not parse"
            );
            assert!(serde_json::from_value::<Timestamp>(input.into()).is_err());
        }
    }

    #[test]
    fn now_round_trips_exactly_through_text_and_millis() {
        let now = Timestamp::now();
        assert_eq!(now.to_string().parse::<Timestamp>().unwrap(), now);
        assert_eq!(Timestamp::from_millis(now.timestamp_millis()).unwrap(), now);
    }
}

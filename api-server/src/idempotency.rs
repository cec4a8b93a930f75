//! `Idempotency-Key` on `POST /messages`: the message id it stands for and the body it was used
//! with.
//!
//! Owns three rules. A key is 1..=255 visible ASCII characters. The message id of a key is
//! UUIDv5 under [`NAMESPACE`] of the tenant and the key, so a retry lands on the same MongoDB
//! `_id` and finds the original, and two tenants using the same key never collide. The
//! [`Fingerprint`] of a request is the SHA-256 of the canonical JSON of the validated create
//! request; stored with the message, it tells a retry (same fingerprint: answer with the
//! original) from a reuse of the key for another body (different fingerprint: 422).
//!
//! It never stores anything and never decides the response itself: the repository keeps the
//! fingerprint beside the message and the handler compares.

use std::fmt;
use std::str::FromStr;

use axum::http::HeaderName;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::problem::Problem;
use crate::validate::NewMessage;

/// The request header.
pub static HEADER: HeaderName = HeaderName::from_static("idempotency-key");

/// Namespace of idempotent message ids: `ebdf9c89-b04f-4b1d-82a5-96966a5af80b`, drawn at random
/// once for this project. Never change it: every key would map to a new id, and a client retrying
/// across the deploy would create a duplicate message instead of getting the original.
pub const NAMESPACE: Uuid = Uuid::from_u128(0xebdf9c89_b04f_4b1d_82a5_96966a5af80b);

/// Longest key, in characters (= bytes: keys are ASCII).
pub const MAX_KEY_LEN: usize = 255;

/// What [`IdempotencyKey::parse`] takes, as a regular expression (the OpenAPI document's; a
/// test holds the two in agreement): 1 to [`MAX_KEY_LEN`] visible ASCII characters.
pub const KEY_PATTERN: &str = "^[!-~]{1,255}$";

/// A valid `Idempotency-Key` value.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

/// Why a key is refused (a 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("must not be empty")]
    Empty,
    #[error("is {0} characters long, at most 255 allowed")]
    TooLong(usize),
    #[error("must be visible ASCII (no spaces or control characters); byte {0} is not")]
    NotVisibleAscii(usize),
}

impl From<KeyError> for Problem {
    fn from(error: KeyError) -> Self {
        Problem::invalid_header(&HEADER, error.to_string())
    }
}

impl IdempotencyKey {
    /// Validates a key as sent (bytes, since a header value need not be UTF-8).
    pub fn parse(value: &[u8]) -> Result<Self, KeyError> {
        if value.is_empty() {
            return Err(KeyError::Empty);
        }
        if value.len() > MAX_KEY_LEN {
            return Err(KeyError::TooLong(value.len()));
        }
        if let Some(position) = value.iter().position(|b| !b.is_ascii_graphic()) {
            return Err(KeyError::NotVisibleAscii(position));
        }
        // All ASCII, so this cannot fail.
        String::from_utf8(value.to_vec())
            .map(Self)
            .map_err(|_| KeyError::NotVisibleAscii(0))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id of the message this key creates for `tenant`: UUIDv5 under [`NAMESPACE`] of
    /// `"<byte length of tenant>:<tenant><key>"`. The length prefix keeps the pair unambiguous
    /// whatever characters a tenant name holds (`("a:", "b")` and `("a", ":b")` differ).
    pub fn message_id(&self, tenant: &str) -> Uuid {
        let name = format!("{}:{tenant}{}", tenant.len(), self.0);
        Uuid::new_v5(&NAMESPACE, name.as_bytes())
    }
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// SHA-256 of a request's canonical JSON. Stored and sent as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

/// A string that is not 64 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a fingerprint is 64 hex digits")]
pub struct FingerprintParseError;

impl FromStr for Fingerprint {
    type Err = FingerprintParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(FingerprintParseError);
        }
        let mut bytes = [0u8; 32];
        for (byte, pair) in bytes.iter_mut().zip(s.as_bytes().chunks_exact(2)) {
            let pair = std::str::from_utf8(pair).map_err(|_| FingerprintParseError)?;
            *byte = u8::from_str_radix(pair, 16).map_err(|_| FingerprintParseError)?;
        }
        Ok(Self(bytes))
    }
}

impl Serialize for Fingerprint {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Fingerprint {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The fingerprint of a validated create request.
///
/// Canonical JSON here means: object keys sorted by their UTF-8 bytes at every level, no
/// whitespace, strings and numbers as serde_json writes them, UUIDs lowercase and hyphenated
/// (they are parsed first, so `ABC…` and `abc…` are the same request). It is not RFC 8785 (JCS),
/// which nothing here needs: only fingerprints made by this function are ever compared. Keys are
/// sorted explicitly rather than trusting `serde_json::Map` to be a `BTreeMap`, because another
/// crate in the build can turn on `preserve_order`.
pub fn request_fingerprint(request: &NewMessage) -> Fingerprint {
    // Serializing strings, UUIDs and JSON values cannot fail.
    let value = serde_json::to_value(request).unwrap_or(Value::Null);
    let mut canonical = String::new();
    write_canonical(&value, &mut canonical);
    Fingerprint(Sha256::digest(canonical.as_bytes()).into())
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push('{');
            for (i, (key, value)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write_canonical(value, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_documented_pattern_is_the_parser() {
        let pattern = regex::Regex::new(KEY_PATTERN).unwrap();
        let long = "k".repeat(MAX_KEY_LEN);
        let longer = "k".repeat(MAX_KEY_LEN + 1);
        let cases: [&[u8]; 9] = [
            b"a",
            b"order-1:retry",
            long.as_bytes(),
            longer.as_bytes(),
            b"",
            b"with space",
            b"tab\t",
            b"caf\xc3\xa9",
            b"\x7f",
        ];
        for value in cases {
            // Header bytes as Latin-1 characters, as a client library sends a string.
            let text: String = value.iter().map(|&b| char::from(b)).collect();
            assert_eq!(
                pattern.is_match(&text),
                IdempotencyKey::parse(value).is_ok(),
                "{text:?}"
            );
        }
    }

    use serde_json::json;

    use super::*;
    use crate::validate::{Limits, parse_create};

    #[test]
    fn validates_keys() {
        let ok = |s: &str| Ok(s.to_owned());
        let cases: Vec<(Vec<u8>, Result<String, KeyError>)> = vec![
            (b"a".to_vec(), ok("a")),
            (
                b"3f0e8c1a-retry_1~!\"#".to_vec(),
                ok("3f0e8c1a-retry_1~!\"#"),
            ),
            (vec![b'k'; 255], ok(&"k".repeat(255))),
            (vec![], Err(KeyError::Empty)),
            (vec![b'k'; 256], Err(KeyError::TooLong(256))),
            (b"a b".to_vec(), Err(KeyError::NotVisibleAscii(1))),
            (b"ab\t".to_vec(), Err(KeyError::NotVisibleAscii(2))),
            (b"\x7f".to_vec(), Err(KeyError::NotVisibleAscii(0))),
            ("clé".as_bytes().to_vec(), Err(KeyError::NotVisibleAscii(2))),
        ];
        for (value, expected) in cases {
            let got = IdempotencyKey::parse(&value).map(|k| k.as_str().to_owned());
            assert_eq!(got, expected, "{}", String::from_utf8_lossy(&value));
        }
        let problem = Problem::from(KeyError::Empty);
        assert_eq!(problem.status, 400);
        assert_eq!(
            problem.detail.as_deref(),
            Some("idempotency-key: must not be empty")
        );
    }

    #[test]
    fn message_ids_are_stable_and_per_tenant() {
        let key = |s: &str| IdempotencyKey::parse(s.as_bytes()).unwrap();
        // Pinned: a change here re-maps every stored key (see NAMESPACE).
        assert_eq!(
            key("order-42").message_id("tenant-123"),
            Uuid::new_v5(&NAMESPACE, b"10:tenant-123order-42")
        );
        assert_eq!(
            NAMESPACE.to_string(),
            "ebdf9c89-b04f-4b1d-82a5-96966a5af80b"
        );
        assert_eq!(
            key("order-42").message_id("tenant-123").get_version_num(),
            5
        );
        // (tenant a, key a, tenant b, key b, same id?)
        let cases = [
            ("t1", "k", "t1", "k", true),
            ("t1", "k", "t2", "k", false),
            ("t1", "k", "t1", "K", false),
            ("a:", "b", "a", ":b", false),
            ("1", "2:x", "12", ":x", false),
        ];
        for (ta, ka, tb, kb, same) in cases {
            assert_eq!(
                key(ka).message_id(ta) == key(kb).message_id(tb),
                same,
                "{ta}/{ka} vs {tb}/{kb}"
            );
        }
    }

    #[test]
    fn fingerprints_identify_the_validated_body() {
        let fp = |body: Value| {
            request_fingerprint(
                &parse_create(body.to_string().as_bytes(), &Limits::default()).unwrap(),
            )
        };
        let conv = "123e4567-e89b-12d3-a456-426614174001";
        let sender = "123e4567-e89b-12d3-a456-426614174002";
        let base = fp(
            json!({"conversationId": conv, "senderId": sender, "content": "hi", "metadata": {"a": 1, "b": {"x": 1, "y": 2}}}),
        );
        // (body, same fingerprint as base?)
        let cases = [
            (
                json!({"metadata": {"b": {"y": 2, "x": 1}, "a": 1}, "content": "hi", "senderId": sender, "conversationId": conv}),
                true,
            ),
            (
                json!({"conversationId": conv.to_uppercase(), "senderId": sender, "content": "hi", "metadata": {"a": 1, "b": {"x": 1, "y": 2}}}),
                true,
            ),
            (
                json!({"conversationId": conv, "senderId": sender, "content": "hi!", "metadata": {"a": 1, "b": {"x": 1, "y": 2}}}),
                false,
            ),
            (
                json!({"conversationId": conv, "senderId": sender, "content": "hi", "metadata": {"a": 2, "b": {"x": 1, "y": 2}}}),
                false,
            ),
            (
                json!({"conversationId": sender, "senderId": conv, "content": "hi", "metadata": {"a": 1, "b": {"x": 1, "y": 2}}}),
                false,
            ),
            (
                json!({"conversationId": conv, "senderId": sender, "content": "hi", "metadata": {"a": 1, "b": {"x": 1, "y": 2}, "c": null}}),
                false,
            ),
        ];
        for (body, same) in cases {
            assert_eq!(fp(body.clone()) == base, same, "{body}");
        }
        // Absent metadata is the empty object.
        assert_eq!(
            fp(json!({"conversationId": conv, "senderId": sender, "content": "hi"})),
            fp(
                json!({"conversationId": conv, "senderId": sender, "content": "hi", "metadata": {}})
            )
        );
    }

    #[test]
    fn canonical_json_sorts_keys_at_every_level() {
        let value =
            json!({"b": [{"z": 1, "a": "\u{e9}\n"}], "a": {"d": null, "c": 1.5}, "B": true});
        let mut out = String::new();
        write_canonical(&value, &mut out);
        assert_eq!(
            out,
            r#"{"B":true,"a":{"c":1.5,"d":null},"b":[{"a":"é\n","z":1}]}"#
        );
    }

    #[test]
    fn fingerprints_round_trip_as_hex() {
        let fingerprint = Fingerprint(Sha256::digest(b"").into());
        let hex = fingerprint.to_string();
        assert_eq!(
            hex,
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(hex.parse::<Fingerprint>(), Ok(fingerprint));
        assert_eq!(hex.to_uppercase().parse::<Fingerprint>(), Ok(fingerprint));
        assert_eq!(serde_json::to_value(fingerprint).unwrap(), json!(hex));
        assert_eq!(
            serde_json::from_value::<Fingerprint>(json!(hex)).unwrap(),
            fingerprint
        );
        for bad in ["", "e3b0", &format!("{hex}0"), &hex.replace('e', "g")] {
            assert_eq!(
                bad.parse::<Fingerprint>(),
                Err(FingerprintParseError),
                "{bad}"
            );
        }
    }
}

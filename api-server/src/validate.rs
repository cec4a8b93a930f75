//! Request bodies of `POST /messages` and `PATCH /messages/{id}`: parsing, then validation.
//!
//! Owns the two steps and the line between them. Parsing ([`parse_json`]) answers 400 when the
//! body is not JSON, or JSON of the wrong shape: a wrong type, an unknown field, a `null` where
//! a value belongs; the detail names the field and the position. Validation answers 422 with
//! *every* violation of well-shaped input as a field error (a JSON Pointer and a message):
//! missing required fields, identifiers that are not UUIDs, content length, U+0000 in any stored
//! string ([`NUL_RULE`]), integers in metadata that 64 bits cannot hold ([`INTEGER_RULE`]),
//! and the metadata limits that keep one tenant's metadata from bloating or
//! confusing the search index.
//!
//! Metadata rules, and why: at most [`Limits::max_metadata_keys`] keys per object and nesting at
//! most [`Limits::max_metadata_depth`] levels (the metadata object is level 1; every nested
//! object or array adds one), at most [`Limits::max_metadata_bytes`] serialized; keys non-empty,
//! at most [`MAX_METADATA_KEY_CHARS`] characters, with no empty dot-separated segment (no leading or
//! trailing `.`, no `..`), because `flattened`/`flat_object` address nested keys by dotted paths.
//!
//! It never reads the request (the caller hands it bytes already bounded by the body limit),
//! never touches storage, and never decides authorization.

use std::collections::BTreeMap;

use serde::de::{DeserializeOwned, Deserializer, IgnoredAny};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::problem::{FieldError, Problem};

/// Longest metadata key, in characters (Unicode scalar values, as JSON Schema counts).
pub const MAX_METADATA_KEY_CHARS: usize = 128;

/// The limits of a valid body; `Default` gives the documented defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest `content`, in characters (Unicode scalar values, what JSON Schema's
    /// `maxLength` counts; default 65,536).
    pub max_content_chars: usize,
    /// Most keys in any one metadata object (default 64).
    pub max_metadata_keys: usize,
    /// Deepest metadata nesting; the metadata object itself is level 1 (default 4).
    pub max_metadata_depth: usize,
    /// Largest metadata as compact JSON, in bytes (default 16 KiB).
    pub max_metadata_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_content_chars: 64 * 1024,
            max_metadata_keys: 64,
            max_metadata_depth: 4,
            max_metadata_bytes: 16 * 1024,
        }
    }
}

/// The create body as sent. Every field is optional here so that a missing one is reported
/// with all other violations (422) instead of stopping the parser (400); `null` is still a
/// wrong type.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CreateMessageRequest {
    #[serde(default, deserialize_with = "not_null")]
    pub conversation_id: Option<String>,
    #[serde(default, deserialize_with = "not_null")]
    pub sender_id: Option<String>,
    #[serde(default, deserialize_with = "not_null")]
    pub content: Option<String>,
    /// Optional; an absent `metadata` is an empty object.
    #[serde(default, deserialize_with = "not_null")]
    pub metadata: Option<Map<String, Value>>,
}

/// A valid create request: what gets stored, and what the idempotency fingerprint covers.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NewMessage {
    pub conversation_id: Uuid,
    pub sender_id: Uuid,
    pub content: String,
    pub metadata: Map<String, Value>,
}

/// The patch body as sent.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PatchMessageRequest {
    #[serde(default, deserialize_with = "not_null")]
    pub content: Option<String>,
    /// Replaces the whole metadata object (no merge); `{}` clears it.
    #[serde(default, deserialize_with = "not_null")]
    pub metadata: Option<Map<String, Value>>,
}

/// A valid patch: at least one of the two is set.
#[derive(Debug, Clone, PartialEq)]
pub struct MessagePatch {
    pub content: Option<String>,
    pub metadata: Option<Map<String, Value>>,
}

/// Parses and validates a create body: 400 or 422 as [`Problem`], or the message.
pub fn parse_create(body: &[u8], limits: &Limits) -> Result<NewMessage, Problem> {
    let request = parse_json::<CreateMessageRequest>(body)?;
    with_number_errors(request.validate(limits), body)
}

/// Parses and validates a patch body: 400 or 422 as [`Problem`], or the patch.
pub fn parse_patch(body: &[u8], limits: &Limits) -> Result<MessagePatch, Problem> {
    let request = parse_json::<PatchMessageRequest>(body)?;
    with_number_errors(request.validate(limits), body)
}

/// Adds the metadata numbers that would not be stored exactly ([`INTEGER_RULE`]) to the other
/// violations of a body that parsed.
fn with_number_errors<T>(validated: Result<T, Vec<FieldError>>, body: &[u8]) -> Result<T, Problem> {
    let inexact = inexact_integers(body);
    match validated {
        Ok(valid) if inexact.is_empty() => Ok(valid),
        Ok(_) => Err(Problem::validation(inexact)),
        Err(mut errors) => {
            errors.extend(inexact);
            Err(Problem::validation(errors))
        }
    }
}

/// Deserializes a JSON body; any failure is a 400 whose detail names the position and, for a
/// value of the wrong shape, the field (also given as a field error).
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, Problem> {
    // serde would read a struct from an array too (positionally): only an object is a body.
    let first = body
        .iter()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n'));
    if first.is_some_and(|&b| b != b'{') {
        return Err(match serde_json::from_slice::<IgnoredAny>(body) {
            Err(e) => malformed(&e, None),
            Ok(_) => Problem::malformed_body(
                "the body must be a JSON object",
                vec![FieldError::new("", "must be a JSON object")],
            ),
        });
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut de)
        .map_err(|e| malformed(e.inner(), Some(e.path())))?;
    // Trailing characters after the object.
    de.end().map_err(|e| malformed(&e, None))?;
    Ok(value)
}

fn malformed(inner: &serde_json::Error, path: Option<&serde_path_to_error::Path>) -> Problem {
    let (line, column) = (inner.line(), inner.column());
    let message = message_without_position(inner);
    let pointer = path.map(path_to_pointer).unwrap_or_default();
    // A syntax error inside a field's value (a lone surrogate, a bad escape, a raw control
    // character in a string) names that field too.
    let in_a_value = path.is_some_and(|p| {
        p.iter().next().is_some()
            && p.iter()
                .all(|s| !matches!(s, serde_path_to_error::Segment::Unknown))
    });
    if inner.is_data() || (inner.is_syntax() && in_a_value) {
        let field = if pointer.is_empty() {
            "the body".to_owned()
        } else {
            format!("`{pointer}`")
        };
        Problem::malformed_body(
            format!("{field}: {message} at line {line} column {column}"),
            vec![FieldError::new(pointer, message)],
        )
    } else if inner.is_eof() && line <= 1 && column == 0 {
        Problem::malformed_body("the body is empty; expected a JSON object", vec![])
    } else {
        Problem::malformed_body(
            format!("the body is not valid JSON: {message} at line {line} column {column}"),
            vec![],
        )
    }
}

/// serde_json's message without its " at line L column C" suffix, cut short so that a huge
/// string the client sent is not echoed back in full.
fn message_without_position(error: &serde_json::Error) -> String {
    const MAX_CHARS: usize = 200;
    let full = error.to_string();
    let suffix = format!(" at line {} column {}", error.line(), error.column());
    let message = full.strip_suffix(&suffix).unwrap_or(&full);
    if message.chars().count() > MAX_CHARS {
        let cut: String = message.chars().take(MAX_CHARS).collect();
        format!("{cut}…")
    } else {
        message.to_owned()
    }
}

fn path_to_pointer(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut pointer = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => push_token(&mut pointer, &index.to_string()),
            Segment::Map { key } => push_token(&mut pointer, key),
            Segment::Enum { variant } => push_token(&mut pointer, variant),
            Segment::Unknown => push_token(&mut pointer, "?"),
        }
    }
    pointer
}

/// Appends one reference token to a JSON Pointer, escaped as RFC 6901 says.
fn push_token(pointer: &mut String, token: &str) {
    pointer.push('/');
    for c in token.chars() {
        match c {
            '~' => pointer.push_str("~0"),
            '/' => pointer.push_str("~1"),
            c => pointer.push(c),
        }
    }
}

/// Runs `f` with `token` appended to `pointer`, and takes it off again afterwards.
fn under(pointer: &mut String, token: &str, f: impl FnOnce(&mut String)) {
    let len = pointer.len();
    push_token(pointer, token);
    f(pointer);
    pointer.truncate(len);
}

/// For `#[serde(default)]` optional fields: absent is `None`, `null` is a type error.
fn not_null<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(deserializer).map(Some)
}

impl CreateMessageRequest {
    /// Every violation, or the valid message.
    pub fn validate(self, limits: &Limits) -> Result<NewMessage, Vec<FieldError>> {
        let mut errors = Vec::new();
        let conversation_id = check_uuid(self.conversation_id, "/conversationId", &mut errors);
        let sender_id = check_uuid(self.sender_id, "/senderId", &mut errors);
        match &self.content {
            Some(content) => check_content(content, limits, &mut errors),
            None => errors.push(FieldError::new("/content", "is required")),
        }
        let metadata = self.metadata.unwrap_or_default();
        check_metadata(&metadata, limits, &mut errors);
        match (conversation_id, sender_id, self.content) {
            (Some(conversation_id), Some(sender_id), Some(content)) if errors.is_empty() => {
                Ok(NewMessage {
                    conversation_id,
                    sender_id,
                    content,
                    metadata,
                })
            }
            _ => Err(errors),
        }
    }
}

impl PatchMessageRequest {
    /// Every violation, or the valid patch.
    pub fn validate(self, limits: &Limits) -> Result<MessagePatch, Vec<FieldError>> {
        let mut errors = Vec::new();
        if self.content.is_none() && self.metadata.is_none() {
            errors.push(FieldError::new("", "set `content`, `metadata` or both"));
        }
        if let Some(content) = &self.content {
            check_content(content, limits, &mut errors);
        }
        if let Some(metadata) = &self.metadata {
            check_metadata(metadata, limits, &mut errors);
        }
        if errors.is_empty() {
            Ok(MessagePatch {
                content: self.content,
                metadata: self.metadata,
            })
        } else {
            Err(errors)
        }
    }
}

fn check_uuid(value: Option<String>, pointer: &str, errors: &mut Vec<FieldError>) -> Option<Uuid> {
    let Some(value) = value else {
        errors.push(FieldError::new(pointer, "is required"));
        return None;
    };
    match parse_uuid(&value) {
        Some(id) if !id.is_nil() => Some(id),
        Some(_) => {
            errors.push(FieldError::new(pointer, "must not be the nil UUID"));
            None
        }
        None => {
            errors.push(FieldError::new(pointer, UUID_RULE));
            None
        }
    }
}

/// What an id in a body, a path or a query must be.
pub const UUID_RULE: &str = "must be a UUID in its hyphenated form (8-4-4-4-12 hex digits)";

/// A UUID in the hyphenated form only (what the OpenAPI document's `format: uuid` means), not
/// the simple, braced or URN forms `Uuid::parse_str` would also take.
pub fn parse_uuid(value: &str) -> Option<Uuid> {
    (value.len() == 36)
        .then(|| Uuid::try_parse(value).ok())
        .flatten()
}

/// Why U+0000 is refused in every string a client stores: MongoDB's BSON keys are
/// NUL-terminated, and FerretDB on PostgreSQL refuses the character in any string
/// (`unsupported Unicode escape sequence`), so the write would fail after validation passed.
pub const NUL_RULE: &str = "must not contain U+0000 (NUL), which the storage cannot hold";

/// Why a number with an integer value beyond 64 bits is refused: JSON numbers are parsed as
/// `i64`, `u64` or, for anything else, an IEEE 754 double, so `123456789012345678901234567890`
/// would be stored, published and returned as `1.2345678901234568e29`, another number than the
/// client sent. Other numbers are kept as the nearest double (RFC 8259 §6). The rule is JSON
/// Schema's: a number is an integer when its value is (`1e3` and `1.0` are), so a double such
/// as `1.5e300` is refused too, and the OpenAPI document can state the rule exactly.
pub const INTEGER_RULE: &str =
    "is an integer outside -2^63..2^64-1, which would not be stored exactly; send it as a string";

/// Every integer in the body's `metadata` that does not fit 64 bits, by JSON Pointer. The body
/// is parsed a second time, keeping each value's text, because once parsed such an integer is a
/// double like any other; metadata is at most a few KiB, so the second pass costs little.
fn inexact_integers(body: &[u8]) -> Vec<FieldError> {
    #[derive(Deserialize)]
    struct Metadata<'a> {
        #[serde(borrow, default)]
        metadata: Option<&'a RawValue>,
    }
    let mut errors = Vec::new();
    if let Ok(Metadata {
        metadata: Some(raw),
    }) = serde_json::from_slice::<Metadata>(body)
    {
        let mut pointer = "/metadata".to_owned();
        walk_integers(raw, &mut pointer, &mut errors);
    }
    errors
}

fn walk_integers(raw: &RawValue, pointer: &mut String, errors: &mut Vec<FieldError>) {
    let text = raw.get();
    match text.as_bytes().first() {
        Some(b'{') => {
            // Sorted by key, so that the errors come in the same order every time.
            let object: BTreeMap<String, &RawValue> =
                serde_json::from_str(text).unwrap_or_default();
            for (key, value) in object {
                under(pointer, &key, |p| walk_integers(value, p, errors));
            }
        }
        Some(b'[') => {
            let items: Vec<&RawValue> = serde_json::from_str(text).unwrap_or_default();
            for (index, item) in items.into_iter().enumerate() {
                under(pointer, &index.to_string(), |p| {
                    walk_integers(item, p, errors)
                });
            }
        }
        Some(b'-' | b'0'..=b'9') if !number_is_exact(text) => {
            errors.push(FieldError::new(pointer.clone(), INTEGER_RULE));
        }
        _ => {}
    }
}

/// Whether a JSON number's text is held exactly: an integer literal within `i64` or `u64`, a
/// double without an integer value, or one whose integer value lies within -2^63..2^64-1
/// (compared as doubles, as a JSON Schema validator does).
fn number_is_exact(text: &str) -> bool {
    if !text.contains(['.', 'e', 'E']) {
        return text.parse::<i64>().is_ok() || text.parse::<u64>().is_ok();
    }
    const MIN: f64 = -9_223_372_036_854_775_808.0; // -2^63
    const END: f64 = 18_446_744_073_709_551_616.0; // 2^64
    match text.parse::<f64>() {
        Ok(x) if x.is_finite() => x.fract() != 0.0 || (MIN..END).contains(&x),
        // serde_json refuses what overflows a double before this is asked.
        _ => false,
    }
}

fn check_content(content: &str, limits: &Limits, errors: &mut Vec<FieldError>) {
    if content.is_empty() {
        errors.push(FieldError::new("/content", "must not be empty"));
    } else if content.contains('\0') {
        errors.push(FieldError::new("/content", NUL_RULE));
    } else {
        let chars = content.chars().count();
        if chars > limits.max_content_chars {
            errors.push(FieldError::new(
                "/content",
                format!(
                    "is {chars} characters, at most {} allowed",
                    limits.max_content_chars
                ),
            ));
        }
    }
}

/// Checks metadata against every rule, reporting all violations under `/metadata`.
pub fn check_metadata(
    metadata: &Map<String, Value>,
    limits: &Limits,
    errors: &mut Vec<FieldError>,
) {
    let mut pointer = "/metadata".to_owned();
    check_object(metadata, 1, limits, &mut pointer, errors);
    // Compact JSON is what is stored and indexed; `to_vec` of a `Map` cannot fail.
    let size = serde_json::to_vec(metadata).map_or(0, |v| v.len());
    if size > limits.max_metadata_bytes {
        errors.push(FieldError::new(
            "/metadata",
            format!(
                "is {size} bytes as JSON, at most {} allowed",
                limits.max_metadata_bytes
            ),
        ));
    }
}

fn check_object(
    object: &Map<String, Value>,
    depth: usize,
    limits: &Limits,
    pointer: &mut String,
    errors: &mut Vec<FieldError>,
) {
    if object.len() > limits.max_metadata_keys {
        errors.push(FieldError::new(
            pointer.clone(),
            format!(
                "has {} keys, at most {} allowed",
                object.len(),
                limits.max_metadata_keys
            ),
        ));
    }
    for (key, value) in object {
        under(pointer, key, |p| {
            if let Some(problem) = key_problem(key) {
                errors.push(FieldError::new(p.clone(), problem));
            }
            check_value(value, depth + 1, limits, p, errors);
        });
    }
}

fn check_value(
    value: &Value,
    depth: usize,
    limits: &Limits,
    pointer: &mut String,
    errors: &mut Vec<FieldError>,
) {
    let nested = matches!(value, Value::Object(_) | Value::Array(_));
    if nested && depth > limits.max_metadata_depth {
        // One error for the subtree: its insides are moot.
        errors.push(FieldError::new(
            pointer.clone(),
            format!("nests deeper than {} levels", limits.max_metadata_depth),
        ));
        return;
    }
    match value {
        Value::Object(object) => check_object(object, depth, limits, pointer, errors),
        Value::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                under(pointer, &index.to_string(), |p| {
                    check_value(item, depth + 1, limits, p, errors);
                });
            }
        }
        Value::String(text) if text.contains('\0') => {
            errors.push(FieldError::new(pointer.clone(), NUL_RULE));
        }
        _ => {}
    }
}

fn key_problem(key: &str) -> Option<String> {
    if key.is_empty() {
        Some("key must not be empty".to_owned())
    } else if key.chars().count() > MAX_METADATA_KEY_CHARS {
        Some(format!(
            "key is {} characters, at most {MAX_METADATA_KEY_CHARS} allowed",
            key.chars().count()
        ))
    } else if key.contains('\0') {
        Some(format!("key {NUL_RULE}"))
    } else if key.split('.').any(str::is_empty) {
        Some("key must not start or end with `.` or contain `..`".to_owned())
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const CONV: &str = "123e4567-e89b-12d3-a456-426614174001";
    const SENDER: &str = "123e4567-e89b-12d3-a456-426614174002";

    fn errors_of(problem: &Problem) -> Vec<(&str, &str)> {
        problem
            .errors
            .iter()
            .map(|e| (e.pointer.as_str(), e.message.as_str()))
            .collect()
    }

    #[test]
    fn accepts_valid_creates() {
        let cases = [
            json!({"conversationId": CONV, "senderId": SENDER, "content": "hi"}),
            json!({"conversationId": CONV, "senderId": SENDER, "content": "hi", "metadata": {}}),
            json!({"conversationId": CONV.to_uppercase(), "senderId": SENDER, "content": "x".repeat(64 * 1024),
                   "metadata": {"a": {"b": {"c": 1}}, "d4": {"b": {"c": {"d": 1}}}, "l": [1, "x", {"k": null}], "a.b": true, "ключ": "значение"}}),
        ];
        for body in cases {
            let message = parse_create(body.to_string().as_bytes(), &Limits::default())
                .unwrap_or_else(|p| panic!("{body}: {p:?}"));
            assert_eq!(message.conversation_id.to_string(), CONV);
            assert_eq!(message.sender_id.to_string(), SENDER);
        }
    }

    #[test]
    fn malformed_bodies_are_400_naming_field_and_position() {
        // (body, detail, field error pointer)
        let cases: Vec<(&str, &str, Option<&str>)> = vec![
            ("", "the body is empty; expected a JSON object", None),
            (
                "{",
                "the body is not valid JSON: EOF while parsing an object at line 1 column 1",
                None,
            ),
            (
                "{\"content\": \"a\",}",
                "the body is not valid JSON: trailing comma at line 1 column 17",
                None,
            ),
            (
                "{} {}",
                "the body is not valid JSON: trailing characters at line 1 column 4",
                None,
            ),
            ("[]", "the body must be a JSON object", Some("")),
            (
                r#" ["123e4567-e89b-12d3-a456-426614174001", "123e4567-e89b-12d3-a456-426614174002", "x"]"#,
                "the body must be a JSON object",
                Some(""),
            ),
            (r#""x""#, "the body must be a JSON object", Some("")),
            (
                "nope",
                "the body is not valid JSON: expected ident at line 1 column 2",
                None,
            ),
            (
                r#"{"content": 5}"#,
                "`/content`: invalid type: integer `5`, expected a string at line 1 column 13",
                Some("/content"),
            ),
            (
                r#"{"content": null}"#,
                "`/content`: invalid type: null, expected a string at line 1 column 16",
                Some("/content"),
            ),
            (
                r#"{"metadata": "x"}"#,
                "`/metadata`: invalid type: string \"x\", expected a map at line 1 column 16",
                Some("/metadata"),
            ),
            (
                r#"{"metadata": null}"#,
                "`/metadata`: invalid type: null, expected a map at line 1 column 17",
                Some("/metadata"),
            ),
            (
                r#"{"tenantId": "t2", "content": "x"}"#,
                "`/tenantId`: unknown field `tenantId`, expected one of `conversationId`, `senderId`, `content`, `metadata` at line 1 column 11",
                Some("/tenantId"),
            ),
            (
                r#"{"content": "a", "content": "b"}"#,
                "the body: duplicate field `content` at line 1 column 26",
                Some(""),
            ),
        ];
        for (body, detail, pointer) in cases {
            let problem = parse_create(body.as_bytes(), &Limits::default()).expect_err(body);
            assert_eq!(problem.status, 400, "{body}");
            assert_eq!(problem.detail.as_deref(), Some(detail), "{body}");
            assert_eq!(
                problem.errors.first().map(|e| e.pointer.as_str()),
                pointer,
                "{body}"
            );
        }
    }

    #[test]
    fn long_values_are_not_echoed_in_full() {
        let body = json!({"metadata": "y".repeat(10_000)}).to_string();
        let problem = parse_create(body.as_bytes(), &Limits::default()).unwrap_err();
        assert_eq!(problem.status, 400);
        assert!(problem.detail.unwrap().len() < 400);
    }

    #[test]
    fn create_violations_are_422_and_all_listed() {
        let limits = Limits {
            max_content_chars: 5,
            max_metadata_keys: 2,
            max_metadata_depth: 3,
            max_metadata_bytes: 1024,
        };
        let long_key = "k".repeat(MAX_METADATA_KEY_CHARS + 1);
        let long_pointer = format!("/metadata/{long_key}");
        let cases: Vec<(Value, Vec<(&str, &str)>)> = vec![
            (
                json!({}),
                vec![
                    ("/conversationId", "is required"),
                    ("/senderId", "is required"),
                    ("/content", "is required"),
                ],
            ),
            (
                json!({"conversationId": "nope", "senderId": "00000000-0000-0000-0000-000000000000", "content": ""}),
                vec![
                    ("/conversationId", UUID_RULE),
                    ("/senderId", "must not be the nil UUID"),
                    ("/content", "must not be empty"),
                ],
            ),
            (
                // Only the hyphenated form: not simple, braced or URN.
                json!({"conversationId": CONV.replace('-', ""), "senderId": format!("{{{SENDER}}}"), "content": "x"}),
                vec![("/conversationId", UUID_RULE), ("/senderId", UUID_RULE)],
            ),
            (
                json!({"conversationId": CONV, "senderId": SENDER, "content": "123456"}),
                vec![("/content", "is 6 characters, at most 5 allowed")],
            ),
            (
                // Characters, not bytes: "éééééé" is 12 bytes and 6 characters.
                json!({"conversationId": CONV, "senderId": SENDER, "content": "éééééé"}),
                vec![("/content", "is 6 characters, at most 5 allowed")],
            ),
            (
                json!({"conversationId": CONV, "senderId": SENDER, "content": "x", "metadata": {"a": 1, "b": 2, "c": 3}}),
                vec![("/metadata", "has 3 keys, at most 2 allowed")],
            ),
            (
                // U+0000 anywhere a string is stored: content, a key, a value, nested.
                json!({"conversationId": CONV, "senderId": SENDER, "content": "a\u{0}b",
                       "metadata": {"k\u{0}": 1, "v": ["ok", {"w": "\u{0}"}]}}),
                vec![
                    ("/content", NUL_RULE),
                    (
                        "/metadata/k\u{0}",
                        "key must not contain U+0000 (NUL), which the storage cannot hold",
                    ),
                    ("/metadata/v/1/w", NUL_RULE),
                ],
            ),
            (
                json!({"conversationId": CONV, "senderId": SENDER, "content": "x",
                       "metadata": {"a": {"b": {"c": 1, "d": 2, "e": 3}}}}),
                vec![("/metadata/a/b", "has 3 keys, at most 2 allowed")],
            ),
            (
                json!({"conversationId": CONV, "senderId": SENDER, "content": "x",
                       "metadata": {"a": {"b": {"c": {"d": 1}}}, "l": [[1], [[1]]]}}),
                vec![
                    ("/metadata/a/b/c", "nests deeper than 3 levels"),
                    ("/metadata/l/1/0", "nests deeper than 3 levels"),
                ],
            ),
            (
                json!({"conversationId": CONV, "senderId": SENDER, "content": "x",
                       "metadata": {"": 1, ".a": 2}}),
                vec![
                    ("/metadata/", "key must not be empty"),
                    (
                        "/metadata/.a",
                        "key must not start or end with `.` or contain `..`",
                    ),
                ],
            ),
            (
                json!({"conversationId": CONV, "senderId": SENDER, "content": "x",
                       "metadata": {"a.": 1, "x": {"a..b": 2, "a/b~c": {"ok": 1}}}}),
                vec![
                    (
                        "/metadata/a.",
                        "key must not start or end with `.` or contain `..`",
                    ),
                    (
                        "/metadata/x/a..b",
                        "key must not start or end with `.` or contain `..`",
                    ),
                ],
            ),
            (
                json!({"conversationId": CONV, "senderId": SENDER, "content": "x",
                       "metadata": {"l": [{"": 1}], long_key.clone(): 1}}),
                vec![
                    ("/metadata/l/0/", "key must not be empty"),
                    (
                        long_pointer.as_str(),
                        "key is 129 characters, at most 128 allowed",
                    ),
                ],
            ),
            (
                json!({"conversationId": CONV, "senderId": SENDER, "content": "x",
                       "metadata": {"big": "z".repeat(1100)}}),
                vec![("/metadata", "is 1110 bytes as JSON, at most 1024 allowed")],
            ),
        ];
        for (body, expected) in cases {
            let problem =
                parse_create(body.to_string().as_bytes(), &limits).expect_err(&body.to_string());
            assert_eq!(problem.status, 422, "{body}");
            let mut got = errors_of(&problem);
            let mut expected = expected;
            got.sort_unstable();
            expected.sort_unstable();
            assert_eq!(got, expected, "{body}");
        }
    }

    #[test]
    fn integers_beyond_64_bits_are_422_where_they_are() {
        let limits = Limits::default();
        let body = format!(
            r#"{{"conversationId": "{CONV}", "senderId": "{SENDER}", "content": "x",
                "metadata": {{"max": 18446744073709551615, "min": -9223372036854775808,
                              "f": 1.5e300, "e": 1E2, "g": 2.5e-300, "big": 18446744073709551616,
                              "l": [1, {{"n": -9223372036854775809}}], "a/b": 123456789012345678901234567890}}}}"#
        );
        let problem = parse_create(body.as_bytes(), &limits).unwrap_err();
        assert_eq!(problem.status, 422);
        assert_eq!(
            errors_of(&problem),
            [
                ("/metadata/a~1b", INTEGER_RULE),
                ("/metadata/big", INTEGER_RULE),
                // An integer value as JSON Schema sees it, beyond 64 bits.
                ("/metadata/f", INTEGER_RULE),
                ("/metadata/l/1/n", INTEGER_RULE),
            ]
        );
        // Listed with the other violations, in a patch too.
        let patch = r#"{"content": "", "metadata": {"k": 99999999999999999999}}"#;
        let problem = parse_patch(patch.as_bytes(), &limits).unwrap_err();
        assert_eq!(
            errors_of(&problem),
            [
                ("/content", "must not be empty"),
                ("/metadata/k", INTEGER_RULE)
            ]
        );
        // The edges of 64 bits are taken, and stay exact.
        let ok = format!(
            r#"{{"conversationId": "{CONV}", "senderId": "{SENDER}", "content": "x",
                "metadata": {{"max": 18446744073709551615, "min": -9223372036854775808, "f": 0.1}}}}"#
        );
        let message = parse_create(ok.as_bytes(), &limits).unwrap();
        assert_eq!(
            serde_json::to_string(&message.metadata).unwrap(),
            r#"{"max":18446744073709551615,"min":-9223372036854775808,"f":0.1}"#
        );
    }

    #[test]
    fn pointers_escape_slash_and_tilde() {
        let limits = Limits::default();
        let body = json!({"content": "x", "conversationId": CONV, "senderId": SENDER,
                          "metadata": {"a/b": {"~.": 1}}});
        let problem = parse_create(body.to_string().as_bytes(), &limits).unwrap_err();
        assert_eq!(
            errors_of(&problem),
            [(
                "/metadata/a~1b/~0.",
                "key must not start or end with `.` or contain `..`"
            )]
        );
    }

    #[test]
    fn patches() {
        let limits = Limits::default();
        let ok = |content: Option<&str>, metadata: Option<Value>| MessagePatch {
            content: content.map(str::to_owned),
            metadata: metadata.map(|m| m.as_object().unwrap().clone()),
        };
        // (body, Ok(patch) | Err((status, pointers)))
        type Case<'a> = (&'a str, Result<MessagePatch, (u16, Vec<&'a str>)>);
        let cases: Vec<Case> = vec![
            (r#"{"content": "new"}"#, Ok(ok(Some("new"), None))),
            (r#"{"metadata": {}}"#, Ok(ok(None, Some(json!({}))))),
            (
                r#"{"content": "c", "metadata": {"k": 1}}"#,
                Ok(ok(Some("c"), Some(json!({"k": 1})))),
            ),
            ("{}", Err((422, vec![""]))),
            (r#"{"content": ""}"#, Err((422, vec!["/content"]))),
            (
                r#"{"content": "", "metadata": {"": 1}}"#,
                Err((422, vec!["/content", "/metadata/"])),
            ),
            (r#"{"content": null}"#, Err((400, vec!["/content"]))),
            (
                r#"{"content": "\u0000", "metadata": {"k": "a\u0000"}}"#,
                Err((422, vec!["/content", "/metadata/k"])),
            ),
            // A lone surrogate cannot be decoded into a string at all.
            (r#"{"content": "\ud800"}"#, Err((400, vec!["/content"]))),
            (
                r#"{"conversationId": "x"}"#,
                Err((400, vec!["/conversationId"])),
            ),
            (r#"{"metadata": []}"#, Err((400, vec!["/metadata"]))),
            ("nope", Err((400, vec![]))),
        ];
        for (body, expected) in cases {
            let got = parse_patch(body.as_bytes(), &limits).map_err(|p| {
                let pointers: Vec<&str> = p.errors.iter().map(|e| e.pointer.as_str()).collect();
                (
                    p.status,
                    pointers.into_iter().map(str::to_owned).collect::<Vec<_>>(),
                )
            });
            let expected =
                expected.map_err(|(s, v)| (s, v.into_iter().map(str::to_owned).collect()));
            assert_eq!(got, expected, "{body}");
        }
    }

    #[test]
    fn defaults_are_documented_values() {
        let limits = Limits::default();
        assert_eq!(
            (
                limits.max_content_chars,
                limits.max_metadata_keys,
                limits.max_metadata_depth,
                limits.max_metadata_bytes
            ),
            (65_536, 64, 4, 16_384)
        );
    }
}

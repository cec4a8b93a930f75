//! Request bodies of `POST /messages` and `PATCH /messages/{id}`: parsing, then validation.
//!
//! Owns the two steps and the line between them. Parsing ([`parse_json`]) answers 400 when the
//! body is not JSON, or JSON of the wrong shape: a wrong type, an unknown field, a `null` where
//! a value belongs; the detail names the field and the position. Validation answers 422 with
//! *every* violation of well-shaped input as a field error (a JSON Pointer and a message):
//! missing required fields, identifiers that are not UUIDs, content length, U+0000 in any stored
//! string ([`NUL_RULE`]), and the metadata limits that keep one tenant's metadata from bloating or
//! confusing the search index.
//!
//! Metadata rules, and why: at most [`Limits::max_metadata_keys`] keys per object and nesting at
//! most [`Limits::max_metadata_depth`] levels (the metadata object is level 1; every nested
//! object or array adds one), at most [`Limits::max_metadata_bytes`] serialized; keys non-empty,
//! at most [`MAX_METADATA_KEY_BYTES`] bytes, with no empty dot-separated segment (no leading or
//! trailing `.`, no `..`), because `flattened`/`flat_object` address nested keys by dotted paths.
//!
//! It never reads the request (the caller hands it bytes already bounded by the body limit),
//! never touches storage, and never decides authorization.

use serde::de::{DeserializeOwned, Deserializer, IgnoredAny};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::problem::{FieldError, Problem};

/// Longest metadata key, in bytes.
pub const MAX_METADATA_KEY_BYTES: usize = 128;

/// The limits of a valid body; `Default` gives the documented defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest `content`, in UTF-8 bytes (default 64 KiB).
    pub max_content_bytes: usize,
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
            max_content_bytes: 64 * 1024,
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
    parse_json::<CreateMessageRequest>(body)?
        .validate(limits)
        .map_err(Problem::validation)
}

/// Parses and validates a patch body: 400 or 422 as [`Problem`], or the patch.
pub fn parse_patch(body: &[u8], limits: &Limits) -> Result<MessagePatch, Problem> {
    parse_json::<PatchMessageRequest>(body)?
        .validate(limits)
        .map_err(Problem::validation)
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
    match Uuid::parse_str(&value) {
        Ok(id) if !id.is_nil() => Some(id),
        Ok(_) => {
            errors.push(FieldError::new(pointer, "must not be the nil UUID"));
            None
        }
        Err(_) => {
            errors.push(FieldError::new(pointer, "must be a UUID"));
            None
        }
    }
}

/// Why U+0000 is refused in every string a client stores: MongoDB's BSON keys are
/// NUL-terminated, and FerretDB on PostgreSQL refuses the character in any string
/// (`unsupported Unicode escape sequence`), so the write would fail after validation passed.
pub const NUL_RULE: &str = "must not contain U+0000 (NUL), which the storage cannot hold";

fn check_content(content: &str, limits: &Limits, errors: &mut Vec<FieldError>) {
    if content.is_empty() {
        errors.push(FieldError::new("/content", "must not be empty"));
    } else if content.contains('\0') {
        errors.push(FieldError::new("/content", NUL_RULE));
    } else if content.len() > limits.max_content_bytes {
        errors.push(FieldError::new(
            "/content",
            format!(
                "is {} bytes, at most {} allowed",
                content.len(),
                limits.max_content_bytes
            ),
        ));
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
        let len = pointer.len();
        push_token(pointer, key);
        if let Some(problem) = key_problem(key) {
            errors.push(FieldError::new(pointer.clone(), problem));
        }
        check_value(value, depth + 1, limits, pointer, errors);
        pointer.truncate(len);
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
                let len = pointer.len();
                push_token(pointer, &index.to_string());
                check_value(item, depth + 1, limits, pointer, errors);
                pointer.truncate(len);
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
    } else if key.len() > MAX_METADATA_KEY_BYTES {
        Some(format!(
            "key is {} bytes, at most {MAX_METADATA_KEY_BYTES} allowed",
            key.len()
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
            max_content_bytes: 5,
            max_metadata_keys: 2,
            max_metadata_depth: 3,
            max_metadata_bytes: 1024,
        };
        let long_key = "k".repeat(MAX_METADATA_KEY_BYTES + 1);
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
                    ("/conversationId", "must be a UUID"),
                    ("/senderId", "must not be the nil UUID"),
                    ("/content", "must not be empty"),
                ],
            ),
            (
                json!({"conversationId": CONV, "senderId": SENDER, "content": "123456"}),
                vec![("/content", "is 6 bytes, at most 5 allowed")],
            ),
            (
                // Bytes, not chars: "ééé" is 6 bytes.
                json!({"conversationId": CONV, "senderId": SENDER, "content": "ééé"}),
                vec![("/content", "is 6 bytes, at most 5 allowed")],
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
                        "key is 129 bytes, at most 128 allowed",
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
                limits.max_content_bytes,
                limits.max_metadata_keys,
                limits.max_metadata_depth,
                limits.max_metadata_bytes
            ),
            (65_536, 64, 4, 16_384)
        );
    }
}

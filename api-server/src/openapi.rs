//! The OpenAPI document served at `/openapi.json`: what each route takes and answers, exactly.
//!
//! Paths, parameters and success bodies come from the handlers' `#[utoipa::path]` annotations
//! and the types they use ([`ApiDoc`]). What those cannot say is added here, from the rules the
//! server applies, so that document and server cannot drift apart:
//! - the request bodies, built from the configured [`Limits`] and `validate`'s rules: unknown
//!   fields refused (`additionalProperties: false`), ids as hyphenated non-nil UUIDs, no U+0000,
//!   metadata keys, depth and numbers as JSON Schema (one schema per nesting level);
//! - every error status each operation can answer ([`OPERATIONS`]), each with the problem schema;
//! - operation ids, and links from a create to the read, update, delete and listing of the same
//!   message, so that a client (or a stateful fuzzer) can follow one message through its life.
//!
//! Two rules JSON Schema cannot state are said in the descriptions and answered with documented
//! statuses: metadata's size as compact JSON (422) and the size of the whole body (413).

use serde_json::{Value, json};
use utoipa::OpenApi;

use crate::validate::{Limits, MAX_METADATA_KEY_CHARS};
use crate::{cursor, etag, idempotency, search};

/// What the annotations give: paths, parameters, success responses, response schemas.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "message-pipeline api-server",
        description = "Messages per tenant on MongoDB, relayed to Kafka, searchable. Every error is application/problem+json (RFC 9457)."
    ),
    paths(
        crate::routes::messages::create,
        crate::routes::messages::get,
        crate::routes::messages::update,
        crate::routes::messages::delete,
        crate::routes::messages::conversation,
        crate::routes::search::search,
    ),
    components(schemas(
        crate::store::Message,
        crate::routes::messages::MessagePage,
        crate::problem::Problem,
        crate::problem::FieldError,
    ))
)]
#[derive(Debug)]
pub struct ApiDoc;

/// Per operation: path, method, operation id, and every error status it can answer. 401 is
/// the missing or refused API key; 400 includes the header, path and query checks; 500 is
/// always a bug (counted in `/metrics`) and documented because it can happen, not because it
/// is part of the contract; 429 is the tenant over its limits; 503 is MongoDB (or, for search,
/// the engine) unreachable.
pub const OPERATIONS: &[(&str, &str, &str, &[u16])] = &[
    (
        "/v1/messages",
        "post",
        "createMessage",
        &[400, 401, 409, 413, 415, 422, 429, 500, 503],
    ),
    (
        "/v1/messages/{id}",
        "get",
        "getMessage",
        &[400, 401, 404, 429, 500, 503],
    ),
    (
        "/v1/messages/{id}",
        "patch",
        "updateMessage",
        &[400, 401, 404, 409, 412, 413, 415, 422, 429, 500, 503],
    ),
    (
        "/v1/messages/{id}",
        "delete",
        "deleteMessage",
        &[400, 401, 404, 409, 412, 429, 500, 503],
    ),
    (
        "/v1/conversations/{conversationId}/messages",
        "get",
        "listConversationMessages",
        &[400, 401, 429, 500, 503],
    ),
    (
        "/v1/search",
        "get",
        "searchMessages",
        &[400, 401, 429, 500, 503],
    ),
];

/// The nil UUID, which no message, conversation or sender may be.
const NIL_UUID: &str = "00000000-0000-0000-0000-000000000000";

fn error_description(status: u16) -> &'static str {
    match status {
        400 => "Malformed body, header, path or query parameter",
        401 => "No API key, or not a known one",
        404 => "No such message for this tenant (also another tenant's)",
        409 => {
            "Conflicts with the message's state: its Idempotency-Key's message was deleted, or it kept changing under the request"
        }
        412 => "If-Match does not match the current version",
        413 => "The body is larger than the server's limit (API_MAX_BODY_BYTES)",
        415 => "The body is not application/json",
        422 => {
            "Invalid fields (every violation listed in `errors`), or the Idempotency-Key reused with another body"
        }
        429 => {
            "The tenant is over its request rate or has too many requests in flight on this server; retry after Retry-After seconds"
        }
        500 => "A bug: the server failed to handle the request (counted in /metrics)",
        503 => "A dependency is unreachable; retry later",
        _ => "Error",
    }
}

/// The whole document for a server with these limits.
pub fn document(limits: &Limits) -> Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_else(|_| json!({}));
    // Indexing a `Value` mutably creates the objects on the way.
    let components = &mut doc["components"];
    components["securitySchemes"]["bearer"] = json!({
        "type": "http",
        "scheme": "bearer",
        "description": "An API key from the keys file; it alone decides the tenant",
    });
    for (name, schema) in body_schemas(limits) {
        components["schemas"][name] = schema;
    }
    // A stored message passed the same rules.
    let message = &mut components["schemas"]["Message"];
    message["properties"]["metadata"] = json!({"$ref": "#/components/schemas/Metadata"});
    message["additionalProperties"] = json!(false);
    for status in [400, 401, 404, 409, 412, 413, 415, 422, 429, 500, 503] {
        components["responses"][status.to_string()] = error_response(status);
    }

    for &(path, method, id, errors) in OPERATIONS {
        let operation = &mut doc["paths"][path][method];
        operation["operationId"] = json!(id);
        if let Some(responses) = operation["responses"].as_object_mut() {
            for response in responses.values_mut() {
                response["headers"]["X-Correlation-Id"] = correlation_header();
            }
        }
        for status in errors {
            operation["responses"][status.to_string()] =
                json!({"$ref": format!("#/components/responses/{status}")});
        }
        if let Some(parameters) = operation["parameters"].as_array_mut() {
            for parameter in parameters {
                let name = parameter["name"].as_str().unwrap_or_default().to_owned();
                parameter["schema"] = parameter_schema(&name, id);
            }
        }
        for (status, links) in links(id) {
            operation["responses"][status]["links"] = links;
        }
    }
    let bodies = [
        ("/v1/messages", "post", "CreateMessageBody"),
        ("/v1/messages/{id}", "patch", "PatchMessageBody"),
    ];
    for (path, method, schema) in bodies {
        doc["paths"][path][method]["requestBody"] = json!({
            "required": true,
            "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}},
        });
    }
    doc
}

fn correlation_header() -> Value {
    json!({
        "description": "The request's X-Correlation-Id when it was 1..=128 visible ASCII characters, a new UUID otherwise",
        "required": true,
        "schema": {"type": "string", "minLength": 1, "maxLength": 128},
    })
}

fn error_response(status: u16) -> Value {
    let mut response = json!({
        "description": error_description(status),
        "headers": {"X-Correlation-Id": correlation_header()},
        "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}},
    });
    if status == 429 {
        response["headers"]["Retry-After"] = json!({
            "description": "Seconds to wait before the tenant's next request can be taken",
            "required": true,
            "schema": {"type": "integer", "minimum": 1},
        });
    }
    if status == 401 {
        response["headers"]["WWW-Authenticate"] = json!({
            "description": "`Bearer`, or `Bearer error=\"invalid_token\"` when a key was sent and refused",
            "required": true,
            "schema": {"type": "string"},
        });
    }
    response
}

/// The schema of each path, query and header parameter, from the rules of the module that
/// parses it. A parameter without a row here is a bug the tests catch (`null`).
fn parameter_schema(name: &str, operation_id: &str) -> Value {
    match name {
        "id" | "conversationId" | "senderId" => json!({
            "type": "string",
            "format": "uuid",
            "pattern": UUID_PATTERN,
        }),
        "If-Match" => json!({"type": "string", "pattern": etag::IF_MATCH_PATTERN}),
        "Idempotency-Key" => json!({"type": "string", "pattern": idempotency::KEY_PATTERN}),
        "q" => json!({"type": "string", "maxLength": search::MAX_QUERY_CHARS}),
        "limit" => json!({"type": "integer", "minimum": 1, "maximum": search::MAX_LIMIT}),
        "from" | "to" => json!({"type": "string", "format": "date-time"}),
        "cursor" => json!({
            "type": "string",
            "pattern": if operation_id == "searchMessages" {
                cursor::SEARCH_PATTERN
            } else {
                cursor::PAGE_PATTERN
            },
            "description": "`nextCursor` of the previous page, unchanged",
        }),
        _ => Value::Null,
    }
}

/// A UUID in its hyphenated form (`validate::parse_uuid`).
const UUID_PATTERN: &str =
    "^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$";

/// The links of an operation's success responses (OpenAPI 3.1 §4.8.20), by status.
fn links(operation_id: &str) -> Vec<(&'static str, Value)> {
    let read_update_delete = |id: &str| {
        json!({
            "GetMessage": {"operationId": "getMessage", "parameters": {"path.id": id}},
            "UpdateMessage": {"operationId": "updateMessage",
                "parameters": {"path.id": id, "header.If-Match": "$response.header.ETag"}},
            "DeleteMessage": {"operationId": "deleteMessage",
                "parameters": {"path.id": id, "header.If-Match": "$response.header.ETag"}},
        })
    };
    match operation_id {
        "createMessage" => {
            let mut links = read_update_delete("$response.body#/id");
            links["ListConversation"] = json!({"operationId": "listConversationMessages",
                "parameters": {"path.conversationId": "$response.body#/conversationId"}});
            vec![("201", links)]
        }
        "getMessage" | "updateMessage" => vec![("200", read_update_delete("$response.body#/id"))],
        _ => vec![],
    }
}

/// The request bodies and the schemas they use, from the limits `validate` applies.
fn body_schemas(limits: &Limits) -> Vec<(String, Value)> {
    let id = json!({
        "type": "string",
        "format": "uuid",
        "pattern": UUID_PATTERN,
        "not": {"const": NIL_UUID},
        "description": "A UUID in its hyphenated form, not the nil UUID",
    });
    let content = json!({
        "type": "string",
        "minLength": 1,
        "maxLength": limits.max_content_chars,
        "pattern": "^[^\\x00]*$",
        "description": "1 to the server's limit of characters (Unicode scalar values), without U+0000",
    });
    let mut schemas = vec![
        ("MessageId".to_owned(), id),
        ("Content".to_owned(), content),
        (
            "CreateMessageBody".to_owned(),
            json!({
                "type": "object",
                "additionalProperties": false,
                "required": ["conversationId", "senderId", "content"],
                "properties": {
                    "conversationId": {"$ref": "#/components/schemas/MessageId"},
                    "senderId": {"$ref": "#/components/schemas/MessageId"},
                    "content": {"$ref": "#/components/schemas/Content"},
                    "metadata": {"$ref": "#/components/schemas/Metadata"},
                },
            }),
        ),
        (
            "PatchMessageBody".to_owned(),
            json!({
                "type": "object",
                "additionalProperties": false,
                "minProperties": 1,
                "description": "`content`, `metadata` (replaces the whole object; `{}` clears it), or both",
                "properties": {
                    "content": {"$ref": "#/components/schemas/Content"},
                    "metadata": {"$ref": "#/components/schemas/Metadata"},
                },
            }),
        ),
        (
            "MetadataScalar".to_owned(),
            json!({
                "anyOf": [
                    {"type": "string", "pattern": "^[^\\x00]*$"},
                    {"type": "integer", "minimum": i64::MIN, "maximum": u64::MAX},
                    {"type": "number", "not": {"type": "integer"}},
                    {"type": "boolean"},
                    {"type": "null"},
                ],
                "description": "A number with an integer value must fit 64 bits (-2^63..2^64-1); send larger ones as strings",
            }),
        ),
    ];
    schemas.extend(metadata_schemas(limits));
    schemas
}

/// The metadata object, one schema per level of nesting up to the maximum depth.
fn metadata_schemas(limits: &Limits) -> Vec<(String, Value)> {
    let mut schemas = Vec::new();
    // Level 1 is the metadata object itself; each nested object or array adds one level, and a
    // container is allowed at a level up to the maximum depth.
    let depth = limits.max_metadata_depth.max(1);
    for level in 1..=depth {
        let inner = metadata_value(level + 1, depth);
        schemas.push((
            metadata_level(level),
            json!({
                "type": "object",
                "maxProperties": limits.max_metadata_keys,
                "propertyNames": {
                    "minLength": 1,
                    "maxLength": MAX_METADATA_KEY_CHARS,
                    "pattern": "^[^.\\x00]+(\\.[^.\\x00]+)*$",
                    "description": "Non-empty dot-separated segments, without U+0000",
                },
                "additionalProperties": inner,
            }),
        ));
        if level > 1 {
            schemas.push((
                format!("MetadataArray{level}"),
                json!({"type": "array", "items": metadata_value(level + 1, depth)}),
            ));
        }
    }
    schemas.push((
        "Metadata".to_owned(),
        json!({
            "$ref": format!("#/components/schemas/{}", metadata_level(1)),
            "description": format!(
                "A JSON object: at most {} keys per object, {} levels of nesting (this object is level 1), and at most {} bytes as compact JSON (a size JSON Schema cannot state; a larger one is a 422)",
                limits.max_metadata_keys, limits.max_metadata_depth, limits.max_metadata_bytes
            ),
        }),
    ));
    schemas
}

fn metadata_level(level: usize) -> String {
    if level == 1 {
        "MetadataObject".to_owned()
    } else {
        format!("MetadataObject{level}")
    }
}

/// A value at `level`: a scalar, or (up to `depth`) an object or array of that level.
fn metadata_value(level: usize, depth: usize) -> Value {
    let scalar = json!({"$ref": "#/components/schemas/MetadataScalar"});
    if level > depth {
        return scalar;
    }
    json!({"anyOf": [
        scalar,
        {"$ref": format!("#/components/schemas/{}", metadata_level(level))},
        {"$ref": format!("#/components/schemas/MetadataArray{level}")},
    ]})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operation_is_annotated_and_gets_its_statuses() {
        let doc = document(&Limits::default());
        for (path, method, id, errors) in OPERATIONS {
            let operation = &doc["paths"][path][method];
            assert_eq!(operation["operationId"], json!(id), "{method} {path}");
            for status in *errors {
                assert_eq!(
                    operation["responses"][status.to_string()]["$ref"],
                    json!(format!("#/components/responses/{status}")),
                    "{method} {path} {status}"
                );
            }
        }
        let paths = doc["paths"].as_object().unwrap();
        for (path, item) in paths {
            for (method, operation) in item.as_object().unwrap() {
                for parameter in operation["parameters"].as_array().into_iter().flatten() {
                    assert!(
                        parameter["schema"].is_object(),
                        "{method} {path}: parameter {} has no schema row",
                        parameter["name"]
                    );
                }
            }
        }
        let annotated: usize = paths.values().map(|p| p.as_object().unwrap().len()).sum();
        assert_eq!(annotated, OPERATIONS.len(), "an operation without a row");
    }

    #[test]
    fn metadata_levels_follow_the_depth_limit() {
        let limits = Limits {
            max_metadata_depth: 2,
            ..Limits::default()
        };
        let doc = document(&limits);
        let schemas = &doc["components"]["schemas"];
        // Level 2 containers exist; their values are scalars only.
        assert_eq!(
            schemas["MetadataObject2"]["additionalProperties"],
            json!({"$ref": "#/components/schemas/MetadataScalar"})
        );
        assert!(schemas["MetadataObject3"].is_null());
        assert_eq!(
            schemas["MetadataObject"]["maxProperties"],
            json!(limits.max_metadata_keys)
        );
        assert_eq!(
            schemas["MetadataScalar"]["anyOf"][1]["maximum"],
            json!(u64::MAX)
        );
    }
}

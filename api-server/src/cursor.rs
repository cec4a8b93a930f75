//! Opaque pagination cursors: `nextCursor` in a page, `cursor` in the next request.
//!
//! A cursor is URL-safe base64 (no padding) of a small JSON value. Clients must treat it as
//! opaque; this module is the only place that knows what is inside, so the format can change
//! with the API version. A cursor that does not decode is a 400 naming the parameter, never a
//! 500 and never silently the first page.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::problem::Problem;
use crate::store::After;

/// Longest cursor accepted, in characters (a search cursor holds a few sort values).
const MAX_LEN: usize = 1024;

fn encode<T: Serialize>(value: &T) -> String {
    // Serializing numbers, strings and arrays of them cannot fail.
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).unwrap_or_default())
}

fn decode<T: for<'de> Deserialize<'de>>(cursor: &str) -> Result<T, Problem> {
    let invalid = || {
        Problem::invalid_parameter(
            "cursor",
            "not a cursor this API issued; pass `nextCursor` from the previous page unchanged",
        )
    };
    if cursor.len() > MAX_LEN {
        return Err(invalid());
    }
    let bytes = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| invalid())?;
    serde_json::from_slice(&bytes).map_err(|_| invalid())
}

/// The position after the last message of a conversation page: (creation millis, id).
pub fn encode_page(after: &After) -> String {
    encode(&(after.millis, &after.id))
}

pub fn decode_page(cursor: &str) -> Result<After, Problem> {
    let (millis, id): (i64, String) = decode(cursor)?;
    // Only ids this API wrote: a UUID, which also keeps the value out of any query operator.
    let id = Uuid::parse_str(&id)
        .map_err(|_| Problem::invalid_parameter("cursor", "not a cursor this API issued"))?;
    Ok(After {
        millis,
        id: id.to_string(),
    })
}

/// A search engine's `search_after` values: scalars only.
pub fn encode_search(sort: &[Value]) -> String {
    encode(&sort)
}

pub fn decode_search(cursor: &str, expected_len: usize) -> Result<Vec<Value>, Problem> {
    let values: Vec<Value> = decode(cursor)?;
    let scalar = |v: &Value| matches!(v, Value::Number(_) | Value::String(_) | Value::Bool(_));
    if values.len() != expected_len || !values.iter().all(scalar) {
        return Err(Problem::invalid_parameter(
            "cursor",
            "not a cursor for this query; pass `nextCursor` from the previous page with the same parameters",
        ));
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn page_cursors_round_trip_and_refuse_anything_else() {
        let after = After {
            millis: 1_700_000_000_123,
            id: Uuid::from_u128(42).to_string(),
        };
        let cursor = encode_page(&after);
        assert!(
            cursor
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert_eq!(decode_page(&cursor).unwrap(), after);
        let bad = [
            String::new(),
            "!!".into(),
            URL_SAFE_NO_PAD.encode(b"[1]"),
            URL_SAFE_NO_PAD.encode(br#"[1, {"$gt": ""}]"#),
            URL_SAFE_NO_PAD.encode(br#"[1, "not-a-uuid"]"#),
            "A".repeat(MAX_LEN + 1),
        ];
        for cursor in bad {
            let problem = decode_page(&cursor).unwrap_err();
            assert_eq!(problem.status, 400, "{cursor}");
            assert!(problem.detail.unwrap().starts_with("cursor: "));
        }
    }

    #[test]
    fn search_cursors_hold_scalars_of_the_expected_count() {
        let sort = vec![json!(1.5), json!(1_700_000_000_000i64), json!("id")];
        let cursor = encode_search(&sort);
        assert_eq!(decode_search(&cursor, 3).unwrap(), sort);
        assert_eq!(decode_search(&cursor, 2).unwrap_err().status, 400);
        let nested = encode_search(&[json!({"a": 1}), json!(1), json!(2)]);
        assert_eq!(decode_search(&nested, 3).unwrap_err().status, 400);
    }
}

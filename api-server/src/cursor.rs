//! Pagination cursors: `nextCursor` in a page, `cursor` in the next request.
//!
//! A cursor is a position in a total order, written in a small fixed grammar: a conversation
//! page's is `<creation millis>_<id>`, a search's `<score>_<creation millis>_<id>` (the score in
//! exponent form, ignored when the search has no text). Every string of the grammar is a
//! position, so the OpenAPI document can give the grammar as a pattern ([`PAGE_PATTERN`],
//! [`SEARCH_PATTERN`]) and any value that matches it is answered with a page; anything else is a
//! 400 naming the parameter, never a 500 and never silently the first page. Each part has a
//! bounded length, so the grammar bounds the cursor's length too. Clients should still
//! pass `nextCursor` unchanged: the grammar can change with the API version. The id is the
//! message's UUID, which also keeps the value out of any query operator.

use serde_json::{Value, json};
use uuid::Uuid;

use crate::problem::Problem;
use crate::store::After;

/// A conversation page's cursor, as a regular expression.
pub const PAGE_PATTERN: &str = "^-?[0-9]{1,18}_[0-9A-Fa-f]{32}$";
/// A search's cursor, as a regular expression.
pub const SEARCH_PATTERN: &str =
    "^-?[0-9](\\.[0-9]{1,17})?e-?[0-9]{1,2}_-?[0-9]{1,18}_[0-9A-Fa-f]{32}$";

fn invalid() -> Problem {
    Problem::invalid_parameter(
        "cursor",
        "not a cursor this API issues; pass `nextCursor` from the previous page unchanged",
    )
}

/// `-?[0-9]{1,18}` as an `i64` (18 digits always fit).
fn millis(text: &str) -> Option<i64> {
    let digits = text.strip_prefix('-').unwrap_or(text);
    ((1..=18).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| text.parse().ok())
        .flatten()
}

/// 32 hex digits (a UUID's simple form) as the hyphenated id.
fn id(text: &str) -> Option<String> {
    (text.len() == 32 && text.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| Uuid::try_parse(text).ok())
        .flatten()
        .map(|id| id.to_string())
}

/// `-?D(.D{1,17})?e-?D{1,2}` as a finite `f64`.
fn score(text: &str) -> Option<f64> {
    let digits = |s: &str, n: std::ops::RangeInclusive<usize>| {
        n.contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit())
    };
    let (mantissa, exponent) = text.split_once('e')?;
    let mantissa = mantissa.strip_prefix('-').unwrap_or(mantissa);
    let mantissa_ok = match mantissa.split_once('.') {
        Some((int, fraction)) => digits(int, 1..=1) && digits(fraction, 1..=17),
        None => digits(mantissa, 1..=1),
    };
    let exponent_ok = digits(exponent.strip_prefix('-').unwrap_or(exponent), 1..=2);
    (mantissa_ok && exponent_ok)
        .then(|| text.parse().ok())
        .flatten()
}

/// The position after the last message of a conversation page.
pub fn encode_page(after: &After) -> String {
    let id =
        Uuid::try_parse(&after.id).map_or_else(|_| after.id.clone(), |u| u.simple().to_string());
    format!("{}_{id}", after.millis)
}

pub fn decode_page(cursor: &str) -> Result<After, Problem> {
    let (m, i) = cursor.split_once('_').ok_or_else(invalid)?;
    Ok(After {
        millis: millis(m).ok_or_else(invalid)?,
        id: id(i).ok_or_else(invalid)?,
    })
}

/// The search engine's `search_after` values of the last hit (`[score, millis, id]` with a
/// text query, `[millis, id]` without) as a cursor; `None` if they are not of that shape.
pub fn encode_search(sort: &[Value]) -> Option<String> {
    let (score, rest) = match sort {
        [score, rest @ ..] if sort.len() == 3 => (score.as_f64()?, rest),
        rest => (0.0, rest),
    };
    let [millis, id] = rest else { return None };
    let id = Uuid::try_parse(id.as_str()?).ok()?.simple();
    Some(format!("{score:e}_{}_{id}", millis.as_i64()?))
}

/// A search cursor as `search_after` values: `expected_len` 3 with a text query (score
/// first), 2 without.
pub fn decode_search(cursor: &str, expected_len: usize) -> Result<Vec<Value>, Problem> {
    let mut parts = cursor.splitn(3, '_');
    let (Some(s), Some(m), Some(i)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(invalid());
    };
    let score = score(s).ok_or_else(invalid)?;
    let values = vec![
        json!(millis(m).ok_or_else(invalid)?),
        json!(id(i).ok_or_else(invalid)?),
    ];
    Ok(if expected_len == 3 {
        std::iter::once(json!(score)).chain(values).collect()
    } else {
        values
    })
}

#[cfg(test)]
mod tests {
    use regex::Regex;
    use serde_json::json;
    use uuid::Uuid;

    use super::*;

    #[test]
    fn page_cursors_round_trip_and_refuse_anything_else() {
        let after = After {
            millis: 1_700_000_000_123,
            id: Uuid::from_u128(42).to_string(),
        };
        let cursor = encode_page(&after);
        assert_eq!(
            cursor,
            format!("1700000000123_{}", Uuid::from_u128(42).simple())
        );
        assert_eq!(decode_page(&cursor).unwrap(), after);
        let pattern = Regex::new(PAGE_PATTERN).unwrap();
        let cases = [
            (cursor.as_str(), true),
            ("-5_0123456789abcdefABCDEF0123456789", true),
            ("999999999999999999_00000000000000000000000000000000", true),
            ("", false),
            ("!!", false),
            ("1", false),
            ("1_", false),
            ("1_x", false),
            ("1_0123456789abcdef0123456789abcde", false),
            ("1_0123456789abcdef0123456789abcdef0", false),
            (
                "1234567890123456789_0123456789abcdef0123456789abcdef",
                false,
            ),
            ("+1_0123456789abcdef0123456789abcdef", false),
            ("1_0123456789abcdef0123456789abcdef\n", false),
            ("1_{$gt: ''}", false),
        ];
        for (cursor, valid) in cases {
            assert_eq!(pattern.is_match(cursor), valid, "pattern: {cursor:?}");
            match decode_page(cursor) {
                Ok(_) => assert!(valid, "{cursor:?} decoded"),
                Err(problem) => {
                    assert!(!valid, "{cursor:?} refused");
                    assert_eq!(problem.status, 400);
                    assert!(problem.detail.unwrap().starts_with("cursor: "));
                }
            }
        }
    }

    #[test]
    fn search_cursors_round_trip_and_match_their_pattern() {
        let id = Uuid::from_u128(7).to_string();
        let sort = vec![json!(1.5), json!(1_700_000_000_000i64), json!(id)];
        let cursor = encode_search(&sort).unwrap();
        assert_eq!(decode_search(&cursor, 3).unwrap(), sort);
        // Without a text query the score is carried and ignored.
        let plain = encode_search(&sort[1..]).unwrap();
        assert_eq!(decode_search(&plain, 2).unwrap(), sort[1..].to_vec());
        assert_eq!(decode_search(&cursor, 2).unwrap(), sort[1..].to_vec());
        assert_eq!(encode_search(&[json!({"a": 1}), json!(1), json!(id)]), None);
        let pattern = Regex::new(SEARCH_PATTERN).unwrap();
        let tiny = encode_search(&[json!(1.2345678901234567e-40), json!(-1), json!(id)]).unwrap();
        let cases = [
            (cursor.as_str(), true),
            (plain.as_str(), true),
            (tiny.as_str(), true),
            ("0e0_1_0123456789abcdef0123456789abcdef", true),
            (
                "-9.99999999999999999e-99_1_0123456789abcdef0123456789abcdef",
                true,
            ),
            ("1_0123456789abcdef0123456789abcdef", false),
            ("1.5_1_0123456789abcdef0123456789abcdef", false),
            ("1e100_1_0123456789abcdef0123456789abcdef", false),
            ("12e1_1_0123456789abcdef0123456789abcdef", false),
            ("1.e1_1_0123456789abcdef0123456789abcdef", false),
            ("1e1_1_0123456789abcdef0123456789abcdef_", false),
            ("", false),
        ];
        for (cursor, valid) in cases {
            assert_eq!(pattern.is_match(cursor), valid, "pattern: {cursor:?}");
            assert_eq!(decode_search(cursor, 3).is_ok(), valid, "{cursor:?}");
        }
    }
}

//! Entity tags of messages: the `ETag` a response carries and the `If-Match` a write may send.
//!
//! Owns the rule "the ETag of a message is its quoted version" (`"3"`) and the parsing of
//! `If-Match` as RFC 9110 §13.1.1 defines it: `*`, or a comma-separated list of entity tags,
//! compared strongly. A weak tag (`W/"3"`) therefore never matches, and neither does a
//! well-formed tag this server never issued (`"abc"`, `"03"`): both are a 412 at write time, not
//! a 400. Only input that is not an `If-Match` value at all is a 400.
//!
//! It never reads or writes a message: the caller compares [`IfMatch::matches`] with the version
//! it holds and makes its write conditional on that version. A missing message is the caller's
//! 404 (tenant isolation), even for `If-Match: *`, which RFC 9110 would answer with 412.

use axum::http::header::IF_MATCH;
use axum::http::{HeaderMap, HeaderValue};

use crate::problem::Problem;

/// What [`IfMatch::parse`] takes, as an ECMA-262 regular expression over the header value: `*`,
/// or a comma-separated list of strong or weak entity tags, empty list elements allowed. The
/// OpenAPI document gives it, and a test holds the two in agreement.
pub const IF_MATCH_PATTERN: &str =
    r#"^[ \t,]*(\*|(W/)?"[!#-~]*"([ \t]*,[ \t,]*(W/)?"[!#-~]*")*)[ \t]*(,[ \t,]*)?$"#;

/// The `ETag` header value of a message at `version`.
pub fn etag(version: u64) -> HeaderValue {
    HeaderValue::try_from(format!("\"{version}\""))
        .expect("digits in quotes are a valid header value")
}

/// A parsed `If-Match`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IfMatch {
    /// `*`: any current version.
    Any,
    /// The versions of the strong tags this server could have issued, in order, duplicates
    /// removed; empty when the list held only weak or foreign tags (matches nothing).
    Versions(Vec<u64>),
}

/// Why an `If-Match` value is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IfMatchError {
    #[error("empty value; send `*` or quoted versions such as \"3\"")]
    Empty,
    #[error("`*` must be the only value")]
    StarNotAlone,
    #[error(
        "not a list of entity tags (at byte {position}); send `*` or quoted versions such as \"3\""
    )]
    Malformed { position: usize },
}

impl From<IfMatchError> for Problem {
    fn from(error: IfMatchError) -> Self {
        Problem::invalid_header(&IF_MATCH, error.to_string())
    }
}

impl IfMatch {
    /// The request's `If-Match`, all its field lines combined: `None` when absent, a 400 when
    /// garbage.
    pub fn from_headers(headers: &HeaderMap) -> Result<Option<Self>, Problem> {
        let mut lines = headers.get_all(IF_MATCH).iter().peekable();
        if lines.peek().is_none() {
            return Ok(None);
        }
        let mut combined = Vec::new();
        for (i, line) in lines.enumerate() {
            if i > 0 {
                combined.push(b',');
            }
            combined.extend_from_slice(line.as_bytes());
        }
        Self::parse(&combined).map(Some).map_err(Problem::from)
    }

    /// Parses one (combined) field value.
    pub fn parse(value: &[u8]) -> Result<Self, IfMatchError> {
        let mut star = false;
        let mut tags = 0usize;
        let mut versions: Vec<u64> = Vec::new();
        let mut pos = 0;
        let skip_ows = |pos: &mut usize| {
            while matches!(value.get(*pos), Some(b' ' | b'\t')) {
                *pos += 1;
            }
        };
        loop {
            // Empty list elements are allowed (RFC 9110 §5.6.1).
            while matches!(value.get(pos), Some(b' ' | b'\t' | b',')) {
                pos += 1;
            }
            if pos == value.len() {
                break;
            }
            if value[pos] == b'*' {
                if star || tags > 0 {
                    return Err(IfMatchError::StarNotAlone);
                }
                star = true;
                pos += 1;
            } else {
                if star {
                    return Err(IfMatchError::StarNotAlone);
                }
                let weak = value[pos..].starts_with(b"W/");
                if weak {
                    pos += 2;
                }
                if value.get(pos) != Some(&b'"') {
                    return Err(IfMatchError::Malformed { position: pos });
                }
                pos += 1;
                let start = pos;
                while let Some(&c) = value.get(pos) {
                    if c == b'"' {
                        break;
                    }
                    // RFC 9110's etagc also allows obs-text (0x80-0xFF); this server issues
                    // digits only and refuses the obsolete bytes, so that the documented
                    // pattern stays ASCII.
                    if !(c == 0x21 || (0x23..=0x7e).contains(&c)) {
                        return Err(IfMatchError::Malformed { position: pos });
                    }
                    pos += 1;
                }
                if pos == value.len() {
                    return Err(IfMatchError::Malformed { position: pos });
                }
                let opaque = &value[start..pos];
                pos += 1; // closing quote
                tags += 1;
                if let Some(version) = parse_version(opaque).filter(|_| !weak)
                    && !versions.contains(&version)
                {
                    versions.push(version);
                }
            }
            skip_ows(&mut pos);
            match value.get(pos) {
                None => break,
                Some(b',') => {}
                Some(_) => return Err(IfMatchError::Malformed { position: pos }),
            }
        }
        match (star, tags) {
            (true, _) => Ok(Self::Any),
            (false, 0) => Err(IfMatchError::Empty),
            (false, _) => Ok(Self::Versions(versions)),
        }
    }

    /// Whether a message now at `current` satisfies this precondition (strong comparison).
    pub fn matches(&self, current: u64) -> bool {
        match self {
            Self::Any => true,
            Self::Versions(versions) => versions.contains(&current),
        }
    }

    /// The one version a conditional write can expect without reading first: `Some` only for
    /// a list naming exactly one version.
    pub fn expected_version(&self) -> Option<u64> {
        match self {
            Self::Versions(versions) if versions.len() == 1 => Some(versions[0]),
            _ => None,
        }
    }
}

/// The version inside an opaque tag this server issued: canonical decimal, no sign, no leading
/// zero.
fn parse_version(opaque: &[u8]) -> Option<u64> {
    if opaque.is_empty()
        || !opaque.iter().all(u8::is_ascii_digit)
        || (opaque[0] == b'0' && opaque.len() > 1)
    {
        return None;
    }
    std::str::from_utf8(opaque).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_documented_pattern_is_the_parser() {
        let pattern = regex::Regex::new(IF_MATCH_PATTERN).unwrap();
        let cases: [&[u8]; 24] = [
            b"*",
            b"\"1\"",
            b"W/\"1\"",
            b"\"1\", \"2\"",
            b"\"1\",\"abc\" ,W/\"x\"",
            b", ,\"1\",,",
            b"\"\"",
            b"\"caf\xe9\"",
            b"* ,",
            b" \"1\" ",
            b"\"!#~\"",
            b"\t\"1\"\t",
            b"",
            b" ",
            b",",
            b"1",
            b"\"1",
            b"\"a b\"",
            b"\"1\" \"2\"",
            b"*, \"1\"",
            b"\"1\", *",
            b"*,*",
            b"w/\"1\"",
            b"\"\x7f\"",
        ];
        for value in cases {
            let text: String = value.iter().map(|&b| char::from(b)).collect();
            assert_eq!(
                pattern.is_match(&text),
                IfMatch::parse(value).is_ok(),
                "{text:?}"
            );
        }
    }

    use super::*;

    #[test]
    fn etag_is_the_quoted_version() {
        for (version, expected) in [
            (1, "\"1\""),
            (3, "\"3\""),
            (u64::MAX, "\"18446744073709551615\""),
        ] {
            assert_eq!(etag(version), expected);
            // What we issue, we accept.
            assert_eq!(
                IfMatch::parse(etag(version).as_bytes()),
                Ok(IfMatch::Versions(vec![version]))
            );
        }
    }

    #[test]
    fn parses_if_match() {
        use IfMatch::{Any, Versions};
        let cases: Vec<(&[u8], Result<IfMatch, IfMatchError>)> = vec![
            (b"*", Ok(Any)),
            (b" * ", Ok(Any)),
            (b"\"3\"", Ok(Versions(vec![3]))),
            (b"\"3\", \"5\"", Ok(Versions(vec![3, 5]))),
            (b"\"3\",\"3\"", Ok(Versions(vec![3]))),
            (b",\"3\" ,, \"4\",", Ok(Versions(vec![3, 4]))),
            (b"W/\"3\"", Ok(Versions(vec![]))),
            (b"W/\"3\", \"4\"", Ok(Versions(vec![4]))),
            (b"\"abc\"", Ok(Versions(vec![]))),
            (b"\"03\"", Ok(Versions(vec![]))),
            (b"\"-1\"", Ok(Versions(vec![]))),
            (b"\"\"", Ok(Versions(vec![]))),
            (b"\"99999999999999999999\"", Ok(Versions(vec![]))),
            (b"\"a,b\"", Ok(Versions(vec![]))),
            // obs-text is refused (see the parser).
            (
                b"\"\xc3\xa9\"",
                Err(IfMatchError::Malformed { position: 1 }),
            ),
            (b"", Err(IfMatchError::Empty)),
            (b" , ", Err(IfMatchError::Empty)),
            (b"*, \"3\"", Err(IfMatchError::StarNotAlone)),
            (b"\"3\", *", Err(IfMatchError::StarNotAlone)),
            (b"*,*", Err(IfMatchError::StarNotAlone)),
            (b"3", Err(IfMatchError::Malformed { position: 0 })),
            (b"\"3", Err(IfMatchError::Malformed { position: 2 })),
            (b"\"3\" \"4\"", Err(IfMatchError::Malformed { position: 4 })),
            (b"w/\"3\"", Err(IfMatchError::Malformed { position: 0 })),
            (b"\"a b\"", Err(IfMatchError::Malformed { position: 2 })),
            (b"'3'", Err(IfMatchError::Malformed { position: 0 })),
        ];
        for (value, expected) in cases {
            assert_eq!(
                IfMatch::parse(value),
                expected,
                "{}",
                String::from_utf8_lossy(value)
            );
        }
    }

    #[test]
    fn matches_strongly() {
        // (If-Match, current version, matches, expected_version)
        let cases = [
            (IfMatch::Any, 7, true, None),
            (IfMatch::Versions(vec![7]), 7, true, Some(7)),
            (IfMatch::Versions(vec![6]), 7, false, Some(6)),
            (IfMatch::Versions(vec![6, 7]), 7, true, None),
            (IfMatch::Versions(vec![]), 7, false, None),
        ];
        for (if_match, current, matches, expected) in cases {
            assert_eq!(if_match.matches(current), matches, "{if_match:?}");
            assert_eq!(if_match.expected_version(), expected, "{if_match:?}");
        }
    }

    #[test]
    fn reads_headers() {
        let headers = |values: &[&str]| {
            let mut map = HeaderMap::new();
            for v in values {
                map.append(IF_MATCH, HeaderValue::from_str(v).unwrap());
            }
            map
        };
        assert_eq!(IfMatch::from_headers(&headers(&[])), Ok(None));
        assert_eq!(
            IfMatch::from_headers(&headers(&["\"1\"", "W/\"2\", \"3\""])),
            Ok(Some(IfMatch::Versions(vec![1, 3])))
        );
        let problem = IfMatch::from_headers(&headers(&["*", "\"1\""])).unwrap_err();
        assert_eq!(problem.status, 400);
        assert_eq!(
            problem.detail.as_deref(),
            Some("if-match: `*` must be the only value")
        );
    }
}

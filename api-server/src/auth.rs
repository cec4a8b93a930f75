//! API keys: the keys file, the `Authorization` header, and who a key belongs to.
//!
//! Owns the keys file format (YAML, a list of `{name, tenant, sha256}` where `sha256` is the hex
//! SHA-256 of the key), its validation, and [`KeyStore::authenticate`], which maps a presented
//! key to a [`Principal`]. The tenant of a request comes from here and only from here: nothing a
//! client sends besides the key can choose it.
//!
//! It never stores or logs a key, and never compares keys byte by byte: the presented key is
//! hashed and its digest compared with *every* stored digest in constant time, so the response
//! time reveals neither which entry matched nor how long a prefix did. It does not watch the
//! file for changes; reloading is the caller's decision.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};

use axum::http::HeaderValue;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::{Choice, ConditionallySelectable, ConstantTimeEq};

use crate::problem::Problem;

/// Who made a request: the key's name (for logs and audit) and its tenant.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Principal {
    pub name: String,
    pub tenant: String,
}

/// Why the keys file cannot be used. The server must refuse to start on any of these: a
/// half-loaded key set would lock some clients out silently.
#[derive(Debug, thiserror::Error)]
pub enum KeysFileError {
    #[error("reading keys file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parsing keys file: {0}")]
    Parse(#[from] serde_saphyr::Error),
    #[error("keys file has no keys")]
    NoKeys,
    #[error("key #{index}: `name` is empty")]
    EmptyName { index: usize },
    #[error("key `{name}`: `tenant` is empty")]
    EmptyTenant { name: String },
    #[error("key `{name}` appears more than once")]
    DuplicateName { name: String },
    #[error("key `{name}`: `sha256` has {found:?} at position {position}, expected a hex digit")]
    BadHex {
        name: String,
        position: usize,
        found: char,
    },
    #[error("key `{name}`: `sha256` has {digits} hex digits, expected 64")]
    WrongLength { name: String, digits: usize },
    #[error(
        "keys `{first}` and `{second}` have the same sha256, so one key would have two tenants"
    )]
    DuplicateHash { first: String, second: String },
}

/// One entry of the keys file as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyEntry {
    name: String,
    tenant: String,
    sha256: String,
}

struct StoredKey {
    principal: Principal,
    digest: [u8; 32],
}

/// The validated keys file.
pub struct KeyStore {
    keys: Vec<StoredKey>,
}

// By hand so that digests never reach a log: a digest of a weak key can be brute-forced.
impl fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.keys.iter().map(|k| &k.principal))
            .finish()
    }
}

impl KeyStore {
    /// Reads and validates the keys file at `path`.
    pub fn load(path: &Path) -> Result<Self, KeysFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| KeysFileError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_yaml(&text)
    }

    /// Parses and validates the keys file's text.
    pub fn from_yaml(text: &str) -> Result<Self, KeysFileError> {
        let entries: Vec<KeyEntry> = serde_saphyr::from_str(text)?;
        if entries.is_empty() {
            return Err(KeysFileError::NoKeys);
        }
        let mut keys: Vec<StoredKey> = Vec::with_capacity(entries.len());
        let mut names: HashSet<String> = HashSet::new();
        for (index, entry) in entries.into_iter().enumerate() {
            if entry.name.trim().is_empty() {
                return Err(KeysFileError::EmptyName { index });
            }
            if entry.tenant.trim().is_empty() {
                return Err(KeysFileError::EmptyTenant { name: entry.name });
            }
            if !names.insert(entry.name.clone()) {
                return Err(KeysFileError::DuplicateName { name: entry.name });
            }
            let digest = parse_digest(&entry.name, &entry.sha256)?;
            // Comparing digests here is fine: the file is trusted input, not a guess.
            if let Some(other) = keys.iter().find(|k| k.digest == digest) {
                return Err(KeysFileError::DuplicateHash {
                    first: other.principal.name.clone(),
                    second: entry.name,
                });
            }
            keys.push(StoredKey {
                principal: Principal {
                    name: entry.name,
                    tenant: entry.tenant,
                },
                digest,
            });
        }
        Ok(Self { keys })
    }

    /// How many keys the store holds.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the store holds no keys (never true for a store built by this module).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The principal of `key`, if any stored digest is the SHA-256 of `key`.
    ///
    /// Runs through every stored digest whatever matches, comparing each in constant time and
    /// selecting the match's index without a branch, so the time taken depends only on the
    /// number of keys and the length of `key` (which its sender knows).
    pub fn authenticate(&self, key: &str) -> Option<Principal> {
        let presented: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        let mut found = Choice::from(0);
        let mut index = 0u64;
        for (i, stored) in self.keys.iter().enumerate() {
            let equal = stored.digest.ct_eq(&presented);
            found |= equal;
            index = u64::conditional_select(&index, &(i as u64), equal);
        }
        if bool::from(found) {
            usize::try_from(index)
                .ok()
                .and_then(|i| self.keys.get(i))
                .map(|k| k.principal.clone())
        } else {
            None
        }
    }

    /// Authenticates a request from its `Authorization` header value (`None` when absent).
    pub fn authenticate_header(
        &self,
        header: Option<&HeaderValue>,
    ) -> Result<Principal, AuthError> {
        let header = header.ok_or(AuthError::Missing)?;
        let value = header.to_str().map_err(|_| AuthError::Malformed)?;
        let key = bearer_key(value)?;
        self.authenticate(key).ok_or(AuthError::UnknownKey)
    }
}

fn parse_digest(name: &str, hex: &str) -> Result<[u8; 32], KeysFileError> {
    let hex = hex.trim();
    if let Some((position, found)) = hex
        .chars()
        .enumerate()
        .find(|(_, c)| !c.is_ascii_hexdigit())
    {
        return Err(KeysFileError::BadHex {
            name: name.to_owned(),
            position,
            found,
        });
    }
    if hex.len() != 64 {
        return Err(KeysFileError::WrongLength {
            name: name.to_owned(),
            digits: hex.len(),
        });
    }
    let mut digest = [0u8; 32];
    for (byte, pair) in digest.iter_mut().zip(hex.as_bytes().chunks_exact(2)) {
        *byte = (hex_value(pair[0]) << 4) | hex_value(pair[1]);
    }
    Ok(digest)
}

fn hex_value(digit: u8) -> u8 {
    match digit {
        b'0'..=b'9' => digit - b'0',
        b'a'..=b'f' => digit - b'a' + 10,
        b'A'..=b'F' => digit - b'A' + 10,
        _ => 0, // unreachable: checked by the caller
    }
}

/// Why a request is not authenticated. Every variant is a 401; they differ in the detail and in
/// the challenge (RFC 6750: no error code when there were no credentials at all).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no Authorization header")]
    Missing,
    #[error("the Authorization header is not `Bearer <api key>`")]
    Malformed,
    #[error("the Authorization scheme is not Bearer")]
    WrongScheme,
    #[error("the bearer key is empty")]
    EmptyKey,
    #[error("unknown API key")]
    UnknownKey,
}

impl From<AuthError> for Problem {
    fn from(error: AuthError) -> Self {
        match error {
            AuthError::Missing => Problem::missing_credentials(),
            other => Problem::invalid_credentials(other.to_string()),
        }
    }
}

/// The key of an `Authorization: Bearer <key>` header value.
///
/// The scheme is case-insensitive (RFC 9110 §11.1); one or more spaces separate it from the
/// key; the key is one token (no inner whitespace). Other schemes and empty keys are refused.
pub fn bearer_key(value: &str) -> Result<&str, AuthError> {
    let value = value.trim_matches([' ', '\t']);
    let (scheme, rest) = match value.split_once([' ', '\t']) {
        Some((scheme, rest)) => (scheme, rest.trim_start_matches([' ', '\t'])),
        None => (value, ""),
    };
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(if scheme.is_empty() {
            AuthError::Malformed
        } else {
            AuthError::WrongScheme
        });
    }
    if rest.is_empty() {
        return Err(AuthError::EmptyKey);
    }
    if rest.contains([' ', '\t']) {
        return Err(AuthError::Malformed);
    }
    Ok(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha256_hex(key: &str) -> String {
        Sha256::digest(key.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    fn store() -> KeyStore {
        let yaml = format!(
            "- name: alice\n  tenant: t1\n  sha256: {}\n- name: bob\n  tenant: t2\n  sha256: {}\n",
            sha256_hex("alice-secret"),
            sha256_hex("bob-secret").to_uppercase(),
        );
        KeyStore::from_yaml(&yaml).unwrap()
    }

    #[test]
    fn parses_a_valid_file() {
        let store = store();
        assert_eq!(store.len(), 2);
        assert!(!store.is_empty());
        let debug = format!("{store:?}");
        assert!(debug.contains("alice") && !debug.contains(&sha256_hex("alice-secret")));
    }

    #[test]
    fn rejects_bad_files() {
        let good = sha256_hex("k");
        let cases: Vec<(String, &str)> = vec![
            ("[]".into(), "keys file has no keys"),
            ("name: a".into(), "parsing keys file"),
            (
                format!("- {{name: a, tenant: t, sha256: {good}, extra: 1}}"),
                "parsing keys file",
            ),
            (
                format!("- {{name: a, sha256: {good}}}"),
                "parsing keys file",
            ),
            (
                format!("- {{name: '', tenant: t, sha256: {good}}}"),
                "key #0: `name` is empty",
            ),
            (
                format!("- {{name: a, tenant: '  ', sha256: {good}}}"),
                "key `a`: `tenant` is empty",
            ),
            (
                format!(
                    "- {{name: a, tenant: t, sha256: {good}}}\n- {{name: a, tenant: u, sha256: {}}}",
                    sha256_hex("j")
                ),
                "key `a` appears more than once",
            ),
            (
                format!("- {{name: a, tenant: t, sha256: {}g}}", &good[..63]),
                "key `a`: `sha256` has 'g' at position 63, expected a hex digit",
            ),
            (
                "- {name: a, tenant: t, sha256: 'not hex'}".into(),
                "key `a`: `sha256` has 'n' at position 0, expected a hex digit",
            ),
            (
                format!("- {{name: a, tenant: t, sha256: {}}}", &good[..62]),
                "key `a`: `sha256` has 62 hex digits, expected 64",
            ),
            (
                format!("- {{name: a, tenant: t, sha256: {good}00}}"),
                "key `a`: `sha256` has 66 hex digits, expected 64",
            ),
            (
                format!(
                    "- {{name: a, tenant: t, sha256: {good}}}\n- {{name: b, tenant: u, sha256: {}}}",
                    good.to_uppercase()
                ),
                "keys `a` and `b` have the same sha256",
            ),
        ];
        for (yaml, expected) in cases {
            let error = KeyStore::from_yaml(&yaml).expect_err(&yaml).to_string();
            assert!(error.starts_with(expected), "{yaml}: {error}");
        }
    }

    #[test]
    fn authenticates_by_hash_and_takes_the_tenant_from_the_key() {
        let store = store();
        let principal = |name: &str, tenant: &str| {
            Some(Principal {
                name: name.into(),
                tenant: tenant.into(),
            })
        };
        let cases: Vec<(String, Option<Principal>)> = vec![
            ("alice-secret".into(), principal("alice", "t1")),
            ("bob-secret".into(), principal("bob", "t2")),
            ("alice-secre".into(), None),
            ("alice-secret ".into(), None),
            (String::new(), None),
            (sha256_hex("alice-secret"), None), // the hash is not the key
        ];
        for (key, expected) in cases {
            assert_eq!(store.authenticate(&key), expected, "{key}");
        }
    }

    #[test]
    fn parses_the_authorization_header() {
        let cases: Vec<(&str, Result<&str, AuthError>)> = vec![
            ("Bearer abc", Ok("abc")),
            ("bearer abc", Ok("abc")),
            ("BEARER abc", Ok("abc")),
            ("Bearer   abc  ", Ok("abc")),
            ("Bearer\tabc", Ok("abc")),
            ("Bearer a.b-c_d~e+f/g=", Ok("a.b-c_d~e+f/g=")),
            ("Bearer", Err(AuthError::EmptyKey)),
            ("Bearer ", Err(AuthError::EmptyKey)),
            ("Bearer a b", Err(AuthError::Malformed)),
            ("", Err(AuthError::Malformed)),
            ("   ", Err(AuthError::Malformed)),
            ("Basic YTpi", Err(AuthError::WrongScheme)),
            ("Bearerabc", Err(AuthError::WrongScheme)),
            ("Token abc", Err(AuthError::WrongScheme)),
        ];
        for (value, expected) in cases {
            assert_eq!(bearer_key(value), expected, "{value:?}");
        }
    }

    #[test]
    fn authenticates_headers() {
        let store = store();
        let header = |s: &str| HeaderValue::from_str(s).unwrap();
        let cases: Vec<(Option<HeaderValue>, Result<&str, AuthError>, u16)> = vec![
            (None, Err(AuthError::Missing), 401),
            (Some(header("Bearer bob-secret")), Ok("t2"), 200),
            (Some(header("Bearer nope")), Err(AuthError::UnknownKey), 401),
            (
                Some(header("Basic Ym9iOng=")),
                Err(AuthError::WrongScheme),
                401,
            ),
            (
                Some(HeaderValue::from_bytes(b"Bearer \xff").unwrap()),
                Err(AuthError::Malformed),
                401,
            ),
        ];
        for (value, expected, status) in cases {
            let got = store.authenticate_header(value.as_ref());
            assert_eq!(
                got.as_ref().map(|p| p.tenant.as_str()),
                expected.as_ref().copied(),
                "{value:?}"
            );
            if let Err(error) = got {
                let problem = Problem::from(error);
                assert_eq!(problem.status, status);
            }
        }
    }
}

//! How the workers reach the search engine (feature `search-client`): the credentials and the CA
//! the operator gives both of them ([`crate::worker::env`]), turned into the one HTTP client and
//! [`SearchEndpoint`] every request goes through. The engine's URL stays with each worker: the
//! indexer requires one, the api-server runs without search when it has none.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;

use crate::install::SearchEndpoint;
use crate::worker::env;

/// How to authenticate to the search engine and which CA its certificate must chain to. Its
/// `Debug` says whether a password is set, never the password.
#[derive(Clone, Default, PartialEq, Eq, Args)]
pub struct SearchAccess {
    /// User of HTTP basic authentication.
    #[arg(long, env = env::ELASTICSEARCH_USERNAME)]
    pub search_username: Option<String>,
    #[arg(long, env = env::ELASTICSEARCH_PASSWORD, hide_env_values = true)]
    pub search_password: Option<String>,
    /// PEM file of the CA certificate(s) the engine's certificate must chain to, trusted besides
    /// the public roots (a private CA, as the Elastic and OpenSearch operators make).
    #[arg(long, env = env::ELASTICSEARCH_CA_CERT)]
    pub search_ca_cert: Option<PathBuf>,
}

impl std::fmt::Debug for SearchAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SearchAccess")
            .field("search_username", &self.search_username)
            .field(
                "search_password",
                &crate::access::redacted(&self.search_password),
            )
            .field("search_ca_cert", &self.search_ca_cert)
            .finish()
    }
}

/// A search client that cannot be built; says which file and why.
#[derive(Debug, thiserror::Error)]
pub enum SearchAccessError {
    #[error("reading the search engine's CA file {path}: {source}")]
    CaUnreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the search engine's CA file {path} holds no usable PEM certificate: {source}")]
    CaInvalid {
        path: PathBuf,
        #[source]
        source: reqwest::Error,
    },
    #[error("the search engine's CA file {path} holds no certificate")]
    CaEmpty { path: PathBuf },
    #[error("building the search client: {0}")]
    Client(#[source] reqwest::Error),
}

impl SearchAccess {
    /// The endpoint at `url` with these credentials (a user without a password sends an empty
    /// one, as curl does).
    pub fn endpoint(&self, url: &str) -> SearchEndpoint {
        let endpoint = SearchEndpoint::new(url);
        match &self.search_username {
            Some(user) => {
                endpoint.with_basic_auth(user, self.search_password.clone().unwrap_or_default())
            }
            None => endpoint,
        }
    }

    /// An HTTP client whose requests time out after `timeout` and which trusts the CA file,
    /// when there is one.
    pub fn http_client(&self, timeout: Duration) -> Result<reqwest::Client, SearchAccessError> {
        let mut builder = reqwest::Client::builder().timeout(timeout);
        if let Some(path) = &self.search_ca_cert {
            for certificate in ca_certificates(path)? {
                builder = builder.add_root_certificate(certificate);
            }
        }
        builder.build().map_err(SearchAccessError::Client)
    }
}

fn ca_certificates(path: &Path) -> Result<Vec<reqwest::Certificate>, SearchAccessError> {
    let pem = std::fs::read(path).map_err(|source| SearchAccessError::CaUnreadable {
        path: path.to_owned(),
        source,
    })?;
    let certificates = reqwest::Certificate::from_pem_bundle(&pem).map_err(|source| {
        SearchAccessError::CaInvalid {
            path: path.to_owned(),
            source,
        }
    })?;
    if certificates.is_empty() {
        return Err(SearchAccessError::CaEmpty {
            path: path.to_owned(),
        });
    }
    Ok(certificates)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_search_password() {
        let a = SearchAccess {
            search_username: Some("mp-indexer".into()),
            search_password: Some("s3cret-search".into()),
            search_ca_cert: None,
        };
        let shown = format!("{a:?}");
        assert!(!shown.contains("s3cret-search"), "{shown}");
        assert!(
            shown.contains("mp-indexer") && shown.contains("<redacted>"),
            "{shown}"
        );
    }

    #[test]
    fn a_missing_or_empty_ca_file_is_an_error_naming_it() {
        let dir = std::env::temp_dir().join(format!("search-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let access = |path: &Path| SearchAccess {
            search_ca_cert: Some(path.to_owned()),
            ..SearchAccess::default()
        };
        let missing = dir.join("missing.pem");
        let error = access(&missing)
            .http_client(Duration::from_secs(1))
            .unwrap_err();
        assert!(
            matches!(error, SearchAccessError::CaUnreadable { .. })
                && error.to_string().contains("missing.pem"),
            "{error}"
        );
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let error = access(&empty)
            .http_client(Duration::from_secs(1))
            .unwrap_err();
        assert!(
            matches!(
                error,
                SearchAccessError::CaEmpty { .. } | SearchAccessError::CaInvalid { .. }
            ) && error.to_string().contains("empty.pem"),
            "{error}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn no_ca_file_is_the_public_roots_only() {
        assert!(
            SearchAccess::default()
                .http_client(Duration::from_secs(1))
                .is_ok()
        );
    }
}

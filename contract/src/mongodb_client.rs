//! How the workers reach MongoDB: the connection flags, the client (TLS trusting a CA file), and
//! which errors are refusals (feature `mongodb-client`).

use std::path::PathBuf;

use clap::Args;
use mongodb::Client;
use mongodb::error::{Error, ErrorKind};
use mongodb::options::{ClientOptions, Tls, TlsOptions};

use crate::access::{Refused, Service, mongodb_cause};
use crate::document::endpoint;
use crate::worker::env;

/// Where the messages are and how to reach them. Its `Debug` shows the URI's hosts, never its
/// credentials or options.
#[derive(Clone, Args)]
pub struct MongoArgs {
    /// MongoDB connection string.
    #[arg(long, env = env::MONGODB_URI, hide_env_values = true)]
    pub mongodb_uri: String,
    /// A CA file (PEM) the connection trusts (turns TLS on); the URI's `tlsCAFile` does the same.
    #[arg(long, env = env::MONGODB_CA_FILE)]
    pub mongodb_ca_file: Option<PathBuf>,
    /// Database of the messages collection.
    #[arg(long, env = env::MONGODB_DATABASE, default_value = "message_pipeline")]
    pub mongodb_database: String,
    /// The messages collection; the relay keeps its registrations in `<collection>_relay`.
    #[arg(long, env = env::MONGODB_COLLECTION, default_value = "messages")]
    pub mongodb_collection: String,
}

impl std::fmt::Debug for MongoArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MongoArgs")
            .field("mongodb_uri", &self.endpoint())
            .field("mongodb_ca_file", &self.mongodb_ca_file)
            .field("mongodb_database", &self.mongodb_database)
            .field("mongodb_collection", &self.mongodb_collection)
            .finish()
    }
}

impl MongoArgs {
    /// The server as logs and refusals name it: the URI's hosts, never its credentials.
    pub fn endpoint(&self) -> String {
        endpoint(&self.mongodb_uri)
    }

    /// A client of the server (no round trip yet), over TLS trusting the CA file when one is
    /// given.
    pub async fn client(&self) -> Result<Client, Error> {
        let mut options = ClientOptions::parse(&self.mongodb_uri).await?;
        if let Some(ca) = &self.mongodb_ca_file {
            // The URI's other TLS settings (a client certificate) stay.
            let mut tls = match options.tls.take() {
                Some(Tls::Enabled(tls)) => tls,
                _ => TlsOptions::default(),
            };
            tls.ca_file_path = Some(ca.clone());
            options.tls = Some(Tls::Enabled(tls));
        }
        Client::with_options(options)
    }
}

/// The refusal `error` is (credentials, CA, permissions), by the server at `endpoint`.
pub fn refusal(error: &Error, endpoint: &str) -> Option<Refused> {
    let code = match error.kind.as_ref() {
        ErrorKind::Command(c) => Some(c.code),
        _ => None,
    };
    let text = format!("{error} {error:?}");
    mongodb_cause(code, &text)
        .map(|cause| Refused::new(Service::MongoDb, cause, endpoint, error.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_the_hosts_and_never_the_credentials() {
        let args = MongoArgs {
            mongodb_uri: "mongodb://mp-api:s3cret-mongo@db-0:27017,db-1:27017/?tls=true".into(),
            mongodb_ca_file: None,
            mongodb_database: "message_pipeline".into(),
            mongodb_collection: "messages".into(),
        };
        let shown = format!("{args:?}");
        assert!(
            !shown.contains("s3cret-mongo") && !shown.contains("mp-api"),
            "{shown}"
        );
        assert!(shown.contains("db-0:27017,db-1:27017"), "{shown}");
    }
}

//! MongoDB as the audit and the rebuild read it: the messages in `_id` order, a page at a time
//! from one cursor, the whole documents of chosen ids, and the relay's lowest watermark.

use std::collections::HashMap;

use futures::TryStreamExt;
use mongodb::bson::{self, Bson, Document, doc};
use mongodb::{Collection, Cursor};
use pipeline_contract::access::Refused;
use pipeline_contract::document::{StoredMessage, WATERMARK, field, relay_state_collection};
use pipeline_contract::mongodb_client::{self, MongoArgs};

use crate::audit::Held;

/// A MongoDB request that failed, or a document the walk cannot read.
#[derive(Debug, thiserror::Error)]
pub enum StoredError {
    #[error("{0}")]
    Refused(Refused),
    #[error("MongoDB at {endpoint}: {source}")]
    Mongo {
        endpoint: String,
        #[source]
        source: mongodb::error::Error,
    },
    #[error("message document {id:?} has no {field} MongoDB can read as the walk needs")]
    Shape { id: String, field: &'static str },
}

/// The messages collection and the relay's registrations beside it.
#[derive(Debug, Clone)]
pub struct Stored {
    messages: Collection<Document>,
    relay: Collection<Document>,
    endpoint: String,
}

impl Stored {
    pub async fn connect(args: &MongoArgs) -> Result<Self, StoredError> {
        let endpoint = args.endpoint();
        let client = args.client().await.map_err(|source| StoredError::Mongo {
            endpoint: endpoint.clone(),
            source,
        })?;
        let db = client.database(&args.mongodb_database);
        Ok(Self {
            messages: db.collection(&args.mongodb_collection),
            relay: db.collection(&relay_state_collection(&args.mongodb_collection)),
            endpoint,
        })
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    fn error(&self, source: mongodb::error::Error) -> StoredError {
        match mongodb_client::refusal(&source, &self.endpoint) {
            Some(refused) => StoredError::Refused(refused),
            None => StoredError::Mongo {
                endpoint: self.endpoint.clone(),
                source,
            },
        }
    }

    /// Every message's id, version and tombstone flag, in `_id` order, `batch` at a time.
    pub async fn walk(&self, batch: u32) -> Result<StoredWalk, StoredError> {
        self.scan(
            batch,
            Some(doc! {field::ID: 1, field::VERSION: 1, field::DELETED: 1}),
        )
        .await
    }

    /// Every message whole, in `_id` order, `batch` at a time (the rebuild's scan).
    pub async fn documents(&self, batch: u32) -> Result<StoredWalk, StoredError> {
        self.scan(batch, None).await
    }

    async fn scan(
        &self,
        batch: u32,
        projection: Option<Document>,
    ) -> Result<StoredWalk, StoredError> {
        let mut find = self
            .messages
            .find(doc! {})
            .sort(doc! {field::ID: 1})
            .batch_size(batch);
        if let Some(projection) = projection {
            find = find.projection(projection);
        }
        let cursor = find.await.map_err(|e| self.error(e))?;
        Ok(StoredWalk {
            cursor,
            stored: self.clone(),
        })
    }

    /// The whole documents of `ids` that exist, by id; a document of another shape is an error
    /// naming it.
    pub async fn lookup(
        &self,
        ids: &[String],
    ) -> Result<HashMap<String, StoredMessage>, StoredError> {
        let docs: Vec<Document> = self
            .messages
            .find(doc! {field::ID: {"$in": ids}})
            .await
            .map_err(|e| self.error(e))?
            .try_collect()
            .await
            .map_err(|e| self.error(e))?;
        docs.into_iter()
            .map(|d| {
                let id = d.get_str(field::ID).unwrap_or_default().to_owned();
                bson::from_document::<StoredMessage>(d)
                    .map(|m| (m.id.clone(), m))
                    .map_err(|_| StoredError::Shape {
                        id,
                        field: "shape of a message document",
                    })
            })
            .collect()
    }

    /// About how many messages there are (tombstones included), from the collection's metadata.
    pub async fn estimated_count(&self) -> Result<u64, StoredError> {
        self.messages
            .estimated_document_count()
            .await
            .map_err(|e| self.error(e))
    }

    /// The lowest watermark of the relay's registrations (epoch milliseconds): every change
    /// made before it is on Kafka. `None` when no api-server is registered.
    pub async fn watermark(&self) -> Result<Option<i64>, StoredError> {
        let docs: Vec<Document> = self
            .relay
            .find(doc! {})
            .await
            .map_err(|e| self.error(e))?
            .try_collect()
            .await
            .map_err(|e| self.error(e))?;
        Ok(docs.iter().filter_map(|d| d.get_i64(WATERMARK).ok()).min())
    }
}

/// The id-ordered read of the messages, from one cursor.
pub struct StoredWalk {
    cursor: Cursor<Document>,
    stored: Stored,
}

impl std::fmt::Debug for StoredWalk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredWalk")
            .field("endpoint", &self.stored.endpoint)
            .finish_non_exhaustive()
    }
}

impl StoredWalk {
    /// Up to `n` more documents as the audit compares them; `true` with the last of them.
    pub async fn page(&mut self, n: usize) -> Result<(Vec<Held>, bool), StoredError> {
        let (docs, last) = self.raw_page(n).await?;
        let held = docs.iter().map(held_of).collect::<Result<_, _>>()?;
        Ok((held, last))
    }

    /// Up to `n` more documents as stored; `true` with the last of them.
    pub async fn raw_page(&mut self, n: usize) -> Result<(Vec<Document>, bool), StoredError> {
        let mut page = Vec::with_capacity(n);
        while page.len() < n {
            match self.cursor.try_next().await {
                Ok(Some(d)) => page.push(d),
                Ok(None) => return Ok((page, true)),
                Err(e) => return Err(self.stored.error(e)),
            }
        }
        Ok((page, false))
    }
}

/// What the walk needs of a message document.
pub fn held_of(d: &Document) -> Result<Held, StoredError> {
    let id = match d.get(field::ID) {
        Some(Bson::String(id)) => id.clone(),
        other => {
            return Err(StoredError::Shape {
                id: other.map(ToString::to_string).unwrap_or_default(),
                field: "string _id",
            });
        }
    };
    let shape = |field| StoredError::Shape {
        id: id.clone(),
        field,
    };
    let version = match d.get(field::VERSION) {
        Some(Bson::Int64(v)) => u64::try_from(*v).map_err(|_| shape("positive version"))?,
        Some(Bson::Int32(v)) => u64::try_from(*v).map_err(|_| shape("positive version"))?,
        _ => return Err(shape("version")),
    };
    let deleted = d
        .get_bool(field::DELETED)
        .map_err(|_| shape("boolean deleted"))?;
    Ok(Held {
        id,
        version,
        deleted,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_document_becomes_what_the_walk_compares_or_an_error_naming_it() {
        let held = held_of(&doc! {"_id": "a", "version": 3_i64, "deleted": true}).unwrap();
        assert_eq!(
            (held.id.as_str(), held.version, held.deleted),
            ("a", 3, true)
        );
        let held = held_of(&doc! {"_id": "b", "version": 2_i32, "deleted": false}).unwrap();
        assert_eq!(held.version, 2);
        for (d, what) in [
            (
                doc! {"_id": 1, "version": 1_i64, "deleted": false},
                "string _id",
            ),
            (doc! {"_id": "c", "deleted": false}, "version"),
            (
                doc! {"_id": "c", "version": -1_i64, "deleted": false},
                "positive version",
            ),
            (doc! {"_id": "c", "version": 1_i64}, "boolean deleted"),
        ] {
            let error = held_of(&d).unwrap_err().to_string();
            assert!(error.contains(what), "{d}: {error}");
        }
    }
}

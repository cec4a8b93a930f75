//! Group commit of creates: inserts that arrive together go to MongoDB together.
//!
//! A create hands its document to the committer and waits for its own outcome. The committer
//! takes everything waiting (up to `max_batch` documents) as soon as one of its `in_flight` batch
//! slots is free, writes it with one unordered `insert_many`, and maps each document's outcome
//! back to its request: written, its `_id` exists already (an idempotent retry), refused by the
//! server (with the server's code, the other documents unaffected), or unknown (the command
//! failed and may have been applied in part). There is no timer: a create that finds a slot free
//! goes at once, alone; under load a batch is what arrived while the previous ones were in
//! flight, so it grows with the load and the round trip, not with a wait.
//!
//! Conditional updates are not grouped. MongoDB's `update` command answers one matched count for
//! all of its statements, so a stale writer's miss could not be told from another writer's hit;
//! only MongoDB 8's `bulkWrite` reports each operation's outcome, and FerretDB has no `bulkWrite`.

use std::sync::Arc;

use mongodb::Collection;
use mongodb::error::{Error, ErrorKind};
use prometheus_client::metrics::histogram::Histogram;
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::store::StoredMessage;

/// MongoDB's duplicate key error.
const DUPLICATE_KEY: i32 = 11000;

/// What became of one document of a batch.
#[derive(Debug, Clone)]
pub enum Outcome {
    Inserted,
    /// A document with its `_id` exists already; nothing was written.
    Duplicate,
    /// The server refused this document (its code and message); nothing was written.
    Refused {
        code: i32,
        message: String,
    },
    /// The command failed: the document may or may not have been written.
    Failed(Error),
}

/// One create's answer: its document back, what became of it, and the size of its batch.
#[derive(Debug)]
pub struct Committed {
    pub doc: StoredMessage,
    pub outcome: Outcome,
    pub batch: usize,
}

/// The committer stopped (the process is shutting down); the document was not written.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the message store's writer stopped")]
pub struct Stopped;

#[derive(Debug)]
struct Job {
    doc: StoredMessage,
    reply: oneshot::Sender<Committed>,
}

/// The handle creates write through; the committer task stops when every handle is dropped.
#[derive(Debug, Clone)]
pub struct GroupCommit {
    jobs: mpsc::Sender<Job>,
}

impl GroupCommit {
    /// Starts the committer on `collection`; `sizes` observes every batch's size.
    pub fn start(
        collection: Collection<StoredMessage>,
        max_batch: usize,
        in_flight: usize,
        sizes: Histogram,
    ) -> Self {
        let max_batch = max_batch.max(1);
        let (jobs, queue) = mpsc::channel(max_batch * 4);
        tokio::spawn(run(collection, queue, max_batch, in_flight.max(1), sizes));
        Self { jobs }
    }

    /// Writes `doc` with whatever else is waiting, and answers with its own outcome.
    #[tracing::instrument(
        name = "mongodb insert",
        skip_all,
        fields(
            otel.kind = "client",
            db.system.name = "mongodb",
            db.operation.name = "insert",
            message.id = %doc.id,
            db.operation.batch.size = tracing::field::Empty,
        )
    )]
    pub async fn insert(&self, doc: StoredMessage) -> Result<Committed, Stopped> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job { doc, reply })
            .await
            .map_err(|_| Stopped)?;
        let committed = answer.await.map_err(|_| Stopped)?;
        tracing::Span::current().record("db.operation.batch.size", committed.batch);
        Ok(committed)
    }
}

async fn run(
    collection: Collection<StoredMessage>,
    mut queue: mpsc::Receiver<Job>,
    max_batch: usize,
    in_flight: usize,
    sizes: Histogram,
) {
    let slots = Arc::new(Semaphore::new(in_flight));
    let mut jobs = Vec::with_capacity(max_batch);
    loop {
        // The semaphore is never closed.
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        if queue.recv_many(&mut jobs, max_batch).await == 0 {
            return;
        }
        let batch = std::mem::replace(&mut jobs, Vec::with_capacity(max_batch));
        #[allow(clippy::cast_precision_loss)]
        sizes.observe(batch.len() as f64);
        let collection = collection.clone();
        tokio::spawn(async move {
            commit(&collection, batch).await;
            drop(slot);
        });
    }
}

async fn commit(collection: &Collection<StoredMessage>, batch: Vec<Job>) {
    let n = batch.len();
    let result = collection
        .insert_many(batch.iter().map(|job| &job.doc))
        .ordered(false)
        .await
        .map(drop);
    for (job, outcome) in batch.into_iter().zip(outcomes(n, result)) {
        // A create whose client went away no longer waits for its answer.
        let _ = job.reply.send(Committed {
            doc: job.doc,
            outcome,
            batch: n,
        });
    }
}

/// Each of the `n` documents' outcome, from the answer to their unordered `insert_many`.
pub fn outcomes(n: usize, result: Result<(), Error>) -> Vec<Outcome> {
    let error = match result {
        Ok(()) => return vec![Outcome::Inserted; n],
        Err(error) => error,
    };
    let ErrorKind::InsertMany(failure) = error.kind.as_ref() else {
        return vec![Outcome::Failed(error); n];
    };
    // With a write concern error, the documents without an error of their own were written
    // but not acknowledged as the concern asks: their outcome is unknown.
    let written = if failure.write_concern_error.is_some() {
        Outcome::Failed(error.clone())
    } else {
        Outcome::Inserted
    };
    let mut out = vec![written; n];
    for refused in failure.write_errors.iter().flatten() {
        if let Some(slot) = out.get_mut(refused.index) {
            *slot = if refused.code == DUPLICATE_KEY {
                Outcome::Duplicate
            } else {
                Outcome::Refused {
                    code: refused.code,
                    message: refused.message.clone(),
                }
            };
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use mongodb::bson::{self, doc};
    use mongodb::error::InsertManyError;

    use super::*;

    fn insert_many_error(failure: bson::Document) -> Error {
        let failure: InsertManyError = bson::from_document(failure).unwrap();
        Error::from(ErrorKind::InsertMany(failure))
    }

    fn names(outcomes: &[Outcome]) -> Vec<String> {
        outcomes
            .iter()
            .map(|o| match o {
                Outcome::Inserted => "inserted".to_owned(),
                Outcome::Duplicate => "duplicate".to_owned(),
                Outcome::Refused { code, .. } => format!("refused {code}"),
                Outcome::Failed(_) => "failed".to_owned(),
            })
            .collect()
    }

    #[test]
    fn every_document_of_an_acknowledged_batch_is_inserted() {
        assert_eq!(names(&outcomes(3, Ok(()))), ["inserted"; 3]);
    }

    #[test]
    fn each_write_error_goes_to_its_own_document_and_only_to_it() {
        let error = insert_many_error(doc! {"writeErrors": [
            {"index": 1, "code": 11000, "errmsg": "E11000 duplicate key"},
            {"index": 3, "code": 2, "errmsg": "bad value"},
        ]});
        assert_eq!(
            names(&outcomes(4, Err(error))),
            ["inserted", "duplicate", "inserted", "refused 2"]
        );
    }

    #[test]
    fn a_write_concern_error_leaves_the_written_documents_unknown() {
        let error = insert_many_error(doc! {
            "writeErrors": [{"index": 0, "code": 11000, "errmsg": "E11000 duplicate key"}],
            "writeConcernError": {"code": 64, "codeName": "WriteConcernFailed", "errmsg": "timeout"},
        });
        assert_eq!(names(&outcomes(2, Err(error))), ["duplicate", "failed"]);
    }

    #[test]
    fn a_failed_command_leaves_every_document_unknown() {
        let error = Error::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert_eq!(names(&outcomes(2, Err(error))), ["failed", "failed"]);
    }

    #[test]
    fn an_index_out_of_range_is_ignored() {
        let error = insert_many_error(doc! {"writeErrors": [
            {"index": 7, "code": 11000, "errmsg": "E11000 duplicate key"},
        ]});
        assert_eq!(names(&outcomes(1, Err(error))), ["inserted"]);
    }
}

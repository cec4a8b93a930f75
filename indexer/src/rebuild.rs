//! `indexer rebuild`: the index built again from MongoDB, beside the live one, and swapped in.
//!
//! 1. The next generation `<alias>-00000N` is created from the installed template, with a
//!    staging alias `<alias>-rebuild` as its only alias (so every write goes through an alias with
//!    `require_alias`, as the consume loop's do). Searches keep answering from the current index.
//! 2. The topic's end offsets are taken, **then** MongoDB is scanned in `_id` order, each document
//!    written with its version as external version (tombstones included).
//! 3. The events from those offsets on are applied (catch-up): a change MongoDB took before the
//!    offsets were taken is in the scan, one after them is on the topic after them.
//! 4. One `_aliases` request moves the alias to the new index alone (write index and search
//!    target) and drops the staging alias; then the events that arrived since the catch-up are
//!    applied through the alias, which closes the window in which the live indexer still wrote to
//!    the old index.
//! 5. The old index is kept unless `--delete-old`.
//!
//! With `--operator-swaps` (the operator's Job) steps 1, 4's swap and 5 are the operator's, which
//! owns the index layout: the Job expects the generation created with its staging alias, says
//! `AwaitingSwap` on its Lease after the catch-up, waits until the alias points at the new index,
//! and then applies the last events. The Job's principal then needs no right on aliases or
//! indices beyond the indexer's. Its Lease (`<pipeline>-rebuild-<pod>`) carries the phase and the
//! documents done / total, which the operator puts on the resource's status.
//!
//! Until the swap nothing the live pipeline reads changes, so a rebuild that fails or is
//! interrupted leaves the old index serving; running it again fills the same generation again
//! (external versions make that idempotent). A generation not above the current one is refused,
//! but for the operator's Job finding the alias already on its generation alone: its previous
//! pod said `AwaitingSwap`, the operator swapped, and that pod died before the last events, which
//! reached only the old index. The replacement then fills the index again through the alias
//! itself (scan, catch-up, the last events), so the swapped-in index misses nothing.

use pipeline_contract::MessageEvent;
use pipeline_contract::document::StoredMessage;
use pipeline_contract::install::{
    InstallError, create_generation, delete_index, read_alias, swap_alias,
};
use pipeline_contract::search::{IndexLayout, InvalidAlias, SearchDocument};
use pipeline_contract::search_client::SearchAccessError;
use pipeline_contract::time::Timestamp;

use pipeline_contract::lease::{RebuildProgress, WorkerState};
use pipeline_contract::worker::Role;

use crate::config::RebuildArgs;
use crate::dlq_tools::{DlqToolError, Offsets, TopicReader};
use crate::indexed::{Indexed, IndexedError, Written};
use crate::stored::{Stored, StoredError};

/// Why the rebuild stopped (the old index still serves unless the swap is named as done).
#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    #[error(transparent)]
    Alias(#[from] InvalidAlias),
    #[error(transparent)]
    Access(#[from] SearchAccessError),
    #[error(transparent)]
    Stored(#[from] StoredError),
    #[error(transparent)]
    Indexed(#[from] IndexedError),
    #[error("reading the events topic: {0}")]
    Topic(#[from] DlqToolError),
    #[error(transparent)]
    Offsets(#[from] crate::lag::LagError),
    #[error(transparent)]
    Install(#[from] InstallError),
    #[error(
        "generation {asked} is not newer than the alias's current generation {current}: \
         ask for {next} or more"
    )]
    NotNewer { asked: u32, current: u32, next: u32 },
}

/// Where a rebuild is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Scanning,
    CatchingUp,
    /// Caught up; the operator is to swap the alias (`--operator-swaps` only).
    AwaitingSwap,
    Swapped,
    Done,
}

impl Phase {
    /// The word on the Lease and in the resource's status.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Scanning => "Scanning",
            Self::CatchingUp => "CatchingUp",
            Self::AwaitingSwap => "AwaitingSwap",
            Self::Swapped => "Swapped",
            Self::Done => "Done",
        }
    }
}

/// How often the Job looks whether the operator has swapped the alias.
const SWAP_POLL: std::time::Duration = std::time::Duration::from_secs(1);

/// Progress as the rebuild reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    pub phase: Phase,
    /// Documents of MongoDB written so far, and about how many there are.
    pub done: u64,
    pub total: u64,
}

/// What the rebuild did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RebuildReport {
    pub generation: u32,
    pub index: String,
    /// What the alias pointed at before.
    pub previous: Vec<String>,
    pub started: Timestamp,
    pub finished: Timestamp,
    /// MongoDB documents written (tombstones included), and those that could not become a search
    /// document (a corrupt document: the reasons are logged).
    pub scanned: Written,
    pub unreadable: u64,
    /// Events applied after the scan, before and after the swap; records that are not events.
    pub caught_up: Written,
    pub after_swap: Written,
    pub undecodable: u64,
    pub previous_deleted: bool,
}

/// One rebuild's engine, names and topic.
struct Rebuild<'a> {
    args: &'a RebuildArgs,
    engine: Indexed,
    layout: IndexLayout,
    /// Where the scan and the catch-up write: the staging alias, or the alias itself when
    /// resuming after the swap.
    staging: IndexLayout,
    previous: Vec<String>,
    generation: u32,
    index: String,
    kafka: rdkafka::ClientConfig,
    page: usize,
}

impl<'a> Rebuild<'a> {
    /// The next generation in place (created, or found from an interrupted run) with the
    /// staging alias on it.
    async fn prepare(args: &'a RebuildArgs) -> Result<Self, RebuildError> {
        let layout = args.engine.layout()?;
        let staging = IndexLayout::new(layout.staging_alias())?;
        let http = args.engine.http_client(args.request_timeout_ms)?;
        let engine = Indexed::new(http, args.engine.endpoint(), layout.clone());
        let (http, endpoint) = engine.engine();
        let previous = read_alias(http, endpoint, &layout)
            .await?
            .unwrap_or_default();
        let current = previous
            .iter()
            .filter_map(|i| layout.generation_of(i))
            .max()
            .unwrap_or(0);
        let generation = args.generation.unwrap_or(current + 1);
        let index = layout.index_of(generation);
        let swapped = args.operator_swaps
            && generation == current
            && previous.as_slice() == std::slice::from_ref(&index);
        if generation <= current && !swapped {
            return Err(RebuildError::NotNewer {
                asked: generation,
                current,
                next: current + 1,
            });
        }
        let staging = if swapped {
            tracing::warn!(
                index,
                "rebuild: the alias points at this generation already (an earlier pod of the Job died after the swap): filling it again through the alias"
            );
            layout.clone()
        } else {
            staging
        };
        if args.operator_swaps {
            tracing::info!(
                index,
                ?previous,
                "rebuild: filling the generation the operator made"
            );
        } else {
            let resumed = !create_generation(http, endpoint, &layout, generation).await?;
            tracing::info!(
                index,
                resumed,
                ?previous,
                "rebuild: next generation in place"
            );
        }
        Ok(Self {
            args,
            engine,
            layout,
            staging,
            previous,
            generation,
            index,
            kafka: args.kafka.connection.client_config(),
            page: usize::try_from(args.batch_size).unwrap_or(1000),
        })
    }

    /// Writes every MongoDB document to the new index through the staging alias (or the alias).
    async fn scan(
        &self,
        report: &mut RebuildReport,
        progress: &mut impl FnMut(&Progress),
    ) -> Result<(), RebuildError> {
        let stored = Stored::connect(&self.args.mongodb).await?;
        let mut at = Progress {
            phase: Phase::Scanning,
            done: 0,
            total: stored.estimated_count().await?,
        };
        progress(&at);
        let mut scan = stored.documents(self.args.batch_size).await?;
        // The next page is read while this one is written: two pages in memory at most, and
        // the rebuild goes at the pace of the slower side rather than of both in turn.
        let mut next = scan.raw_page(self.page).await?;
        loop {
            let (docs, last) = next;
            let batch = searchable(docs, report);
            let written = if last {
                let written = self.engine.write(&self.staging, batch).await?;
                next = (Vec::new(), true);
                written
            } else {
                let (written, page) = tokio::join!(
                    self.engine.write(&self.staging, batch),
                    scan.raw_page(self.page)
                );
                next = page?;
                written?
            };
            add(&mut report.scanned, written);
            at.done = report.scanned.applied + report.scanned.newer + report.scanned.rejected;
            at.total = at.total.max(at.done);
            progress(&at);
            if last {
                return Ok(());
            }
        }
    }

    /// Applies the topic's events from `from` to its ends now through `target`; returns what
    /// was written, how many records were not events, and the ends read to.
    async fn apply_events(
        &self,
        target: &IndexLayout,
        from: Offsets,
    ) -> Result<(Written, u64, Offsets), RebuildError> {
        let topic = self.args.kafka.topic.clone();
        let mut reader = TopicReader::open_from(self.kafka.clone(), topic, from);
        let (mut written, mut undecodable) = (Written::default(), 0);
        let mut batch = Vec::with_capacity(self.page);
        loop {
            let record = reader.next().await;
            if let Some(r) = &record {
                match r
                    .payload
                    .as_deref()
                    .map(MessageEvent::decode)
                    .and_then(Result::ok)
                    .map(SearchDocument::try_from)
                {
                    Some(Ok(doc)) => batch.push(doc),
                    // The live indexer dead-letters these; nothing the rebuild can write.
                    _ => undecodable += 1,
                }
            }
            if batch.len() >= self.page || (record.is_none() && !batch.is_empty()) {
                let docs = std::mem::take(&mut batch);
                add(&mut written, self.engine.write(target, docs).await?);
            }
            if record.is_none() {
                break;
            }
        }
        let ends = reader.finish().await?;
        Ok((written, undecodable, ends))
    }
}

/// Runs the rebuild, calling `progress` at each phase and every page of the scan.
pub async fn rebuild(
    args: &RebuildArgs,
    mut progress: impl FnMut(&Progress),
) -> Result<RebuildReport, RebuildError> {
    let started = Timestamp::now();
    let run = Rebuild::prepare(args).await?;
    // The offsets first, then the scan: whatever the scan misses is on the topic after them.
    let from = crate::lag::end_offsets(run.kafka.clone(), &args.kafka.topic).await?;
    let mut report = RebuildReport {
        generation: run.generation,
        index: run.index.clone(),
        previous: run.previous.clone(),
        started,
        finished: started,
        scanned: Written::default(),
        unreadable: 0,
        caught_up: Written::default(),
        after_swap: Written::default(),
        undecodable: 0,
        previous_deleted: false,
    };
    run.scan(&mut report, &mut progress).await?;
    let at = |phase| Progress {
        phase,
        done: report.scanned.applied + report.scanned.newer + report.scanned.rejected,
        total: report.scanned.applied + report.scanned.newer + report.scanned.rejected,
    };
    progress(&at(Phase::CatchingUp));
    let (written, undecodable, caught_up_to) = run.apply_events(&run.staging, from).await?;
    (report.caught_up, report.undecodable) = (written, undecodable);

    let (http, endpoint) = run.engine.engine();
    if args.operator_swaps {
        progress(&at(Phase::AwaitingSwap));
        let alone = std::slice::from_ref(&run.index);
        while read_alias(http, endpoint, &run.layout).await?.as_deref() != Some(alone) {
            tokio::time::sleep(SWAP_POLL).await;
        }
    } else {
        swap_alias(http, endpoint, &run.layout, run.generation, &run.previous).await?;
    }
    progress(&at(Phase::Swapped));
    tracing::info!(index = run.index, previous = ?run.previous, "rebuild: the alias points at the new index");
    let (written, undecodable, _) = run.apply_events(&run.layout, caught_up_to).await?;
    report.after_swap = written;
    report.undecodable += undecodable;

    if args.delete_old && !args.operator_swaps {
        for old in run.previous.iter().filter(|i| **i != run.index) {
            delete_index(http, endpoint, old).await?;
        }
        report.previous_deleted = !run.previous.is_empty();
    }
    progress(&at(Phase::Done));
    report.finished = Timestamp::now();
    Ok(report)
}

fn add(total: &mut Written, more: Written) {
    total.applied += more.applied;
    total.newer += more.newer;
    total.rejected += more.rejected;
    for r in more.reasons {
        if total.reasons.len() < 10 {
            total.reasons.push(r);
        }
    }
}

/// The search documents of a page; what cannot be indexed is counted and logged.
fn searchable(
    docs: Vec<mongodb::bson::Document>,
    report: &mut RebuildReport,
) -> Vec<SearchDocument> {
    let mut batch = Vec::with_capacity(docs.len());
    for d in docs {
        match search_document(d) {
            Ok(doc) => batch.push(doc),
            Err(reason) => {
                tracing::warn!(reason, "rebuild: a MongoDB document that cannot be indexed");
                report.unreadable += 1;
            }
        }
    }
    batch
}

/// The search document of a stored document, or why it has none.
fn search_document(d: mongodb::bson::Document) -> Result<SearchDocument, String> {
    let id = d.get_str("_id").unwrap_or_default().to_owned();
    let m: StoredMessage =
        mongodb::bson::from_document(d).map_err(|e| format!("message document {id:?}: {e}"))?;
    let event = m.to_event().map_err(|e| e.to_string())?;
    SearchDocument::try_from(event).map_err(|e| format!("message {id}: {e}"))
}

/// Runs `indexer rebuild`: prints progress lines and the summary; in a pipeline (its identity in
/// the environment) holds a Lease carrying the progress while it runs.
pub async fn run(args: &RebuildArgs) -> Result<u8, RebuildError> {
    let generation = args.generation.unwrap_or(0);
    let (tx, rx) = tokio::sync::watch::channel(None::<RebuildProgress>);
    let stop = tokio_util::sync::CancellationToken::new();
    let lease = tokio::spawn(pipeline_contract::lease::maintain(
        Role::Rebuild,
        std::time::Duration::from_millis(500),
        move || {
            let state = WorkerState {
                ready: true,
                rebuild: rx.borrow().clone(),
                ..WorkerState::default()
            };
            async move { state }
        },
        stop.clone(),
    ));
    let result = rebuild(args, |p| {
        println!("{:<12} {}/{}", p.phase.as_str(), p.done, p.total);
        let _ = tx.send(Some(RebuildProgress {
            generation,
            phase: p.phase.as_str().to_owned(),
            done: p.done,
            total: p.total,
        }));
    })
    .await;
    // The Lease goes with the process; the Job's own status says how it ended.
    stop.cancel();
    let _ = lease.await;
    let report = result?;
    println!(
        "rebuilt {} (generation {}) from {} MongoDB documents ({} unreadable); {} events caught up \
         before the swap, {} after; the alias left {:?}{}",
        report.index,
        report.generation,
        report.scanned.applied + report.scanned.newer,
        report.unreadable,
        report.caught_up.applied + report.caught_up.newer,
        report.after_swap.applied + report.after_swap.newer,
        report.previous,
        if report.previous_deleted {
            " (deleted)"
        } else {
            " (kept)"
        }
    );
    let rejected = report.scanned.rejected + report.caught_up.rejected + report.after_swap.rejected;
    if rejected > 0 {
        println!(
            "{rejected} documents rejected by the engine, e.g. {:?}",
            report.scanned.reasons
        );
        return Ok(crate::audit_tool::EXIT_DIVERGED);
    }
    Ok(0)
}

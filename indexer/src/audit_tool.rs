//! `indexer audit [--repair]`: walks MongoDB and the index in the same id order, page by page;
//! every divergent document is a *suspect* until it is re-checked after the pipeline's lag (so a
//! change in flight is not counted), then it is a finding of its class (module `audit`), and with
//! `--repair` it is re-indexed from MongoDB with its version as external version (a newer one
//! written meanwhile stays) or, an orphan, deleted unless it changed since it was seen.
//!
//! The re-check reads MongoDB first, then waits until every change before that read is applied
//! (module `lag`), then reads the index: a healthy pipeline's index is then at least as new as
//! what MongoDB said. An orphan is confirmed by reading MongoDB once more, so a document created
//! after the first read is not one. Memory holds a page per side and one page of suspects.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use pipeline_contract::document::StoredMessage;
use pipeline_contract::lease::{AuditOutcome, AuditSummary, DriftCounts};
use pipeline_contract::search::{InvalidAlias, SearchDocument};
use pipeline_contract::search_client::SearchAccessError;
use pipeline_contract::time::Timestamp;

use crate::audit::{Drift, Held, OutOfOrder, Side, Walk, drift};
use crate::config::AuditArgs;
use crate::indexed::{Indexed, IndexedError, Located, Repair};
use crate::lag::{Lag, LagError, Settled};
use crate::stored::{Stored, StoredError};

/// The exit code of an audit that leaves divergent documents (found, not repaired).
pub use pipeline_contract::worker::EXIT_DIVERGED;

/// Why the audit could not finish.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error(transparent)]
    Alias(#[from] InvalidAlias),
    #[error(transparent)]
    Access(#[from] SearchAccessError),
    #[error(transparent)]
    Stored(#[from] StoredError),
    #[error(transparent)]
    Indexed(#[from] IndexedError),
    #[error(transparent)]
    Lag(#[from] LagError),
    #[error(transparent)]
    Order(#[from] OutOfOrder),
}

/// One divergent document, as the re-check found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub id: String,
    pub drift: Drift,
    pub stored: Option<Held>,
    pub indexed: Option<Held>,
    /// With `--repair`: what the repair did.
    pub repair: Option<Repair>,
}

impl Finding {
    /// One line: class, id, both sides' versions, the repair.
    pub fn render(&self) -> String {
        let side = |h: &Option<Held>| {
            h.as_ref().map_or_else(
                || "-".to_owned(),
                |h| format!("v{}{}", h.version, if h.deleted { " deleted" } else { "" }),
            )
        };
        let repair = match &self.repair {
            None => String::new(),
            Some(Repair::Done) => "  repaired".to_owned(),
            Some(Repair::Refused(why)) => format!("  NOT repaired: {why}"),
        };
        format!(
            "{:<11} {}  mongodb={}  index={}{repair}",
            self.drift.as_str(),
            self.id,
            side(&self.stored),
            side(&self.indexed)
        )
    }
}

/// What one audit found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditReport {
    pub started: Timestamp,
    pub finished: Timestamp,
    /// Documents read from MongoDB and from the index, tombstones included.
    pub stored: u64,
    pub indexed: u64,
    /// Divergent on the walk, before the re-check.
    pub suspected: u64,
    /// Divergent after the re-check, per class.
    pub found: BTreeMap<Drift, u64>,
    /// Of those, repaired, per class.
    pub repaired: BTreeMap<Drift, u64>,
    /// When some re-check classified before the lag settled: the part that had not caught up.
    pub unsettled: Option<&'static str>,
}

impl AuditReport {
    fn new(started: Timestamp) -> Self {
        Self {
            started,
            finished: started,
            stored: 0,
            indexed: 0,
            suspected: 0,
            found: BTreeMap::new(),
            repaired: BTreeMap::new(),
            unsettled: None,
        }
    }

    pub fn found_total(&self) -> u64 {
        self.found.values().sum()
    }

    /// Divergent documents the audit leaves as they were.
    pub fn remaining(&self) -> u64 {
        self.found_total() - self.repaired.values().sum::<u64>()
    }

    pub fn exit_code(&self) -> u8 {
        if self.remaining() > 0 {
            EXIT_DIVERGED
        } else {
            0
        }
    }

    /// The summary the command prints.
    pub fn render(&self) -> String {
        let mut out = format!(
            "audited {} MongoDB documents against {} in the index ({} suspected on the walk)\n",
            self.stored, self.indexed, self.suspected
        );
        for d in Drift::ALL {
            out.push_str(&format!(
                "  {:<11} {:>8} found {:>8} repaired\n",
                d.as_str(),
                self.found.get(&d).copied().unwrap_or(0),
                self.repaired.get(&d).copied().unwrap_or(0)
            ));
        }
        if let Some(part) = self.unsettled {
            out.push_str(&format!(
                "note: {part} had not caught up when a re-check ran; changes in flight may be counted\n"
            ));
        }
        out.push_str(&if self.remaining() == 0 {
            "in sync\n".to_owned()
        } else {
            format!("{} divergent documents remain\n", self.remaining())
        });
        out
    }
}

/// The two sides, the lag, and what the re-checks need.
struct Audit<'a> {
    args: &'a AuditArgs,
    stored: Stored,
    indexed: Indexed,
    lag: Lag,
}

/// Runs the audit, calling `on_finding` for each divergent document as the re-checks confirm
/// them (in id order within each page of suspects).
pub async fn audit(
    args: &AuditArgs,
    mut on_finding: impl FnMut(&Finding),
) -> Result<AuditReport, AuditError> {
    let mut report = AuditReport::new(Timestamp::now());
    let layout = args.engine.layout()?;
    let http = args.engine.http_client(args.request_timeout_ms)?;
    let stored = Stored::connect(&args.mongodb).await?;
    let audit = Audit {
        args,
        indexed: Indexed::new(http, args.engine.endpoint(), layout),
        lag: Lag::new(
            stored.clone(),
            args.kafka.connection.clone(),
            args.kafka.topic.clone(),
            args.group.clone(),
        ),
        stored,
    };
    audit.indexed.refresh().await?;
    let page = usize::try_from(args.page_size).unwrap_or(1000);
    let mut walk = Walk::new();
    let mut stored_walk = audit.stored.walk(args.page_size).await?;
    let mut indexed_after: Option<String> = None;
    let mut suspects = Vec::new();
    while let Some(side) = walk.need() {
        let (held, last) = match side {
            Side::Stored => stored_walk.page(page).await?,
            Side::Indexed => {
                let (held, last) = audit.indexed.page(indexed_after.as_deref(), page).await?;
                if let Some(h) = held.last() {
                    indexed_after = Some(h.id.clone());
                }
                (held, last)
            }
        };
        walk.feed(side, held, last)?;
        suspects.extend(walk.decide().into_iter().map(|(id, _)| id));
        if suspects.len() >= page {
            audit
                .recheck(std::mem::take(&mut suspects), &mut report, &mut on_finding)
                .await?;
        }
    }
    if !suspects.is_empty() {
        audit
            .recheck(suspects, &mut report, &mut on_finding)
            .await?;
    }
    (report.stored, report.indexed) = walk.seen();
    report.finished = Timestamp::now();
    Ok(report)
}

impl Audit<'_> {
    async fn recheck(
        &self,
        ids: Vec<String>,
        report: &mut AuditReport,
        on_finding: &mut impl FnMut(&Finding),
    ) -> Result<(), AuditError> {
        report.suspected += ids.len() as u64;
        let read_at = Timestamp::now();
        let stored = self.stored.lookup(&ids).await?;
        let timeout = Duration::from_secs(self.args.settle_timeout_secs);
        if let Settled::No(part) = self.lag.settle(read_at, timeout).await? {
            tracing::warn!(
                part,
                "the pipeline's lag did not settle; re-checking anyway"
            );
            report.unsettled = Some(part);
        }
        self.indexed.refresh().await?;
        let indexed = self.indexed.lookup(&ids).await?;
        // An orphan candidate might have been created after MongoDB was read.
        let candidates: Vec<String> = ids
            .iter()
            .filter(|id| {
                !stored.contains_key(*id) && indexed.get(*id).is_some_and(|l| !l.held.deleted)
            })
            .cloned()
            .collect();
        let created_since: HashSet<String> = if candidates.is_empty() {
            HashSet::new()
        } else {
            self.stored.lookup(&candidates).await?.into_keys().collect()
        };
        let mut findings: Vec<Finding> = ids
            .iter()
            .filter(|id| !created_since.contains(*id))
            .filter_map(|id| {
                let s = stored.get(id).map(held_of);
                let i = indexed.get(id).map(|l| l.held.clone());
                drift(s.as_ref(), i.as_ref()).map(|d| Finding {
                    id: id.clone(),
                    drift: d,
                    stored: s,
                    indexed: i,
                    repair: None,
                })
            })
            .collect();
        if self.args.repair {
            self.repair(&mut findings, &stored, &indexed).await?;
        }
        for f in &findings {
            *report.found.entry(f.drift).or_default() += 1;
            if f.repair == Some(Repair::Done) {
                *report.repaired.entry(f.drift).or_default() += 1;
            }
            on_finding(f);
        }
        Ok(())
    }

    /// Repairs `findings` in place: each gets its outcome.
    async fn repair(
        &self,
        findings: &mut [Finding],
        stored: &HashMap<String, StoredMessage>,
        indexed: &HashMap<String, Located>,
    ) -> Result<(), AuditError> {
        let (mut documents, mut writes, mut orphans, mut deletes) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (k, f) in findings.iter_mut().enumerate() {
            if f.drift == Drift::Orphan {
                if let Some(l) = indexed.get(&f.id) {
                    orphans.push(l.clone());
                    deletes.push(k);
                }
                continue;
            }
            match stored.get(&f.id).map(search_document) {
                Some(Ok(doc)) => {
                    documents.push(doc);
                    writes.push(k);
                }
                Some(Err(why)) => f.repair = Some(Repair::Refused(why)),
                None => {}
            }
        }
        let outcomes = self.indexed.repair(&documents, &orphans).await?;
        for (k, outcome) in writes.into_iter().chain(deletes).zip(outcomes) {
            findings[k].repair = Some(outcome);
        }
        Ok(())
    }
}

fn held_of(m: &StoredMessage) -> Held {
    Held {
        id: m.id.clone(),
        version: m.version(),
        deleted: m.deleted,
    }
}

/// The search document of a stored message, or why it has none.
fn search_document(m: &StoredMessage) -> Result<SearchDocument, String> {
    let event = m.to_event().map_err(|e| e.to_string())?;
    SearchDocument::try_from(event).map_err(|e| format!("message {}: {e}", m.id))
}

impl AuditReport {
    /// The summary the operator reads (from the audit Job's Lease).
    pub fn summary(&self) -> AuditSummary {
        let counts = |m: &BTreeMap<Drift, u64>| {
            let n = |d| m.get(&d).copied().unwrap_or(0);
            DriftCounts {
                missing: n(Drift::Missing),
                stale: n(Drift::Stale),
                resurrected: n(Drift::Resurrected),
                orphan: n(Drift::Orphan),
            }
        };
        let outcome = if self.remaining() > 0 {
            AuditOutcome::Diverged
        } else if self.unsettled.is_some() {
            AuditOutcome::Unsettled
        } else if self.found_total() > 0 {
            AuditOutcome::Repaired
        } else {
            AuditOutcome::InSync
        };
        AuditSummary {
            start_time: self.started.to_string(),
            completion_time: self.finished.to_string(),
            outcome,
            mongodb_documents: self.stored,
            index_documents: self.indexed,
            found: counts(&self.found),
            repaired: counts(&self.repaired),
            message: self
                .unsettled
                .map(|part| format!("{part} had not caught up when a re-check ran"))
                .unwrap_or_default(),
        }
    }
}

/// Runs `indexer audit`: prints each finding and the summary, returns the exit code. In a
/// pipeline (its identity in the environment: the operator's CronJob) the summary, or why the
/// audit failed, also goes on the Lease `<pipeline>-audit` for the operator's status.
pub async fn run(args: &AuditArgs) -> Result<u8, AuditError> {
    let started = Timestamp::now();
    let result = audit(args, |f| println!("{}", f.render())).await;
    let summary = match &result {
        Ok(report) => report.summary(),
        Err(error) => AuditSummary {
            start_time: started.to_string(),
            completion_time: Timestamp::now().to_string(),
            outcome: AuditOutcome::Failed,
            mongodb_documents: 0,
            index_documents: 0,
            found: DriftCounts::default(),
            repaired: DriftCounts::default(),
            message: error.to_string(),
        },
    };
    match summary.publish().await {
        Ok(true) => tracing::info!(outcome = ?summary.outcome, "audit summary on its Lease"),
        Ok(false) => {}
        // The audit's work is done either way; the operator then shows the previous audit.
        Err(error) => tracing::warn!(%error, "writing the audit summary's Lease failed"),
    }
    let report = result?;
    print!("{}", report.render());
    Ok(report.exit_code())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(version: u64, deleted: bool) -> Option<Held> {
        Some(Held {
            id: "a".into(),
            version,
            deleted,
        })
    }

    #[test]
    fn a_finding_is_one_line_with_both_sides_and_the_repair() {
        let mut f = Finding {
            id: "a".into(),
            drift: Drift::Resurrected,
            stored: held(3, true),
            indexed: held(2, false),
            repair: None,
        };
        assert_eq!(f.render(), "resurrected a  mongodb=v3 deleted  index=v2");
        f.repair = Some(Repair::Refused("HTTP 409 x: y".into()));
        assert!(f.render().ends_with("NOT repaired: HTTP 409 x: y"));
        f.drift = Drift::Orphan;
        f.stored = None;
        f.repair = Some(Repair::Done);
        assert_eq!(f.render(), "orphan      a  mongodb=-  index=v2  repaired");
    }

    #[test]
    fn the_exit_code_says_whether_divergence_remains() {
        let mut report = AuditReport::new(Timestamp::now());
        assert_eq!((report.exit_code(), report.remaining()), (0, 0));
        assert!(report.render().ends_with("in sync\n"));
        report.found.insert(Drift::Missing, 2);
        report.found.insert(Drift::Orphan, 1);
        report.repaired.insert(Drift::Missing, 2);
        assert_eq!((report.exit_code(), report.remaining()), (EXIT_DIVERGED, 1));
        assert!(report.render().contains("1 divergent documents remain"));
        report.repaired.insert(Drift::Orphan, 1);
        assert_eq!(report.exit_code(), 0);
    }

    #[test]
    fn the_summary_s_outcome_says_what_remains_first_then_whether_the_lag_settled() {
        let mut report = AuditReport::new(Timestamp::now());
        assert_eq!(report.summary().outcome, AuditOutcome::InSync);
        report.found.insert(Drift::Stale, 2);
        report.repaired.insert(Drift::Stale, 1);
        let s = report.summary();
        assert_eq!(s.outcome, AuditOutcome::Diverged);
        assert_eq!(
            (s.found.stale, s.repaired.stale, s.found.total()),
            (2, 1, 2)
        );
        report.unsettled = Some("the indexer group");
        assert_eq!(report.summary().outcome, AuditOutcome::Diverged);
        report.repaired.insert(Drift::Stale, 2);
        let s = report.summary();
        assert_eq!(s.outcome, AuditOutcome::Unsettled);
        assert!(
            s.message.starts_with("the indexer group had not caught up"),
            "{}",
            s.message
        );
        report.unsettled = None;
        assert_eq!(report.summary().outcome, AuditOutcome::Repaired);
    }
}

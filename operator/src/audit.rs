//! Audits driven by `spec.audit`: the CronJob `<pipeline>-audit` (built in [`crate::build`])
//! runs `indexer audit [--repair]` on its schedule; each run writes its summary on the Lease
//! `<pipeline>-audit`; the operator, the only writer of the status, copies it to
//! `status.audit` and decides the `IndexInSync` condition from it, purely (table-tested).

use messagepipeline_crd::{AuditSpec, AuditStatus, DriftCounts};
use pipeline_contract::lease::{self, AuditOutcome, AuditSummary};

/// The `IndexInSync` condition: status, reason, message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InSync {
    pub status: Option<bool>,
    pub reason: &'static str,
    pub message: String,
}

/// The reason of an `IndexInSync` False: divergent documents remain.
pub const DIVERGENCE_FOUND: &str = "DivergenceFound";

fn counts(c: &lease::DriftCounts) -> DriftCounts {
    DriftCounts {
        missing: c.missing,
        stale: c.stale,
        resurrected: c.resurrected,
        orphan: c.orphan,
    }
}

/// The status of the audit a summary describes.
pub fn status_of(s: &AuditSummary) -> AuditStatus {
    let outcome = match s.outcome {
        AuditOutcome::InSync => "InSync",
        AuditOutcome::Repaired => "Repaired",
        AuditOutcome::Diverged => "Diverged",
        AuditOutcome::Unsettled => "Unsettled",
        AuditOutcome::Failed => "Failed",
    };
    AuditStatus {
        start_time: s.start_time.clone(),
        completion_time: s.completion_time.clone(),
        outcome: outcome.to_owned(),
        mongodb_documents: s.mongodb_documents,
        index_documents: s.index_documents,
        found: counts(&s.found),
        repaired: counts(&s.repaired),
        message: s.message.clone(),
    }
}

/// Each class and its count, in the order of the audit's report.
pub fn classes(c: &DriftCounts) -> [(&'static str, u64); 4] {
    [
        ("missing", c.missing),
        ("stale", c.stale),
        ("resurrected", c.resurrected),
        ("orphan", c.orphan),
    ]
}

fn total(c: &DriftCounts) -> u64 {
    classes(c).iter().map(|(_, n)| n).sum()
}

/// "missing 1, orphan 2": the classes that have documents.
fn listed(c: &DriftCounts) -> String {
    classes(c)
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(class, n)| format!("{class} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn verdict(status: Option<bool>, reason: &'static str, message: String) -> InSync {
    InSync {
        status,
        reason,
        message,
    }
}

/// `IndexInSync` from the spec and the last audit that finished.
pub fn in_sync(spec: Option<&AuditSpec>, last: Option<&AuditStatus>) -> InSync {
    let Some(a) = last else {
        return match spec {
            None => verdict(
                None,
                "NoAudit",
                "no audit has run: set spec.audit.schedule to audit the index against MongoDB"
                    .into(),
            ),
            Some(s) if s.suspend => verdict(
                None,
                "AuditSuspended",
                "no audit has finished, and spec.audit.suspend is true".into(),
            ),
            Some(s) => verdict(
                None,
                "AuditPending",
                format!(
                    "no audit has finished yet; they run on the schedule {:?}",
                    s.schedule
                ),
            ),
        };
    };
    let at = &a.completion_time;
    let documents = a.mongodb_documents;
    match a.outcome.as_str() {
        "InSync" => verdict(
            Some(true),
            "InSync",
            format!(
                "the audit that ended {at} found the index equal to MongoDB ({documents} documents)"
            ),
        ),
        "Repaired" => verdict(
            Some(true),
            "Repaired",
            format!(
                "the audit that ended {at} repaired {} divergent documents ({}) of {documents}",
                total(&a.repaired),
                listed(&a.repaired)
            ),
        ),
        "Diverged" => {
            let (found, repaired) = (total(&a.found), total(&a.repaired));
            let fix = if repaired > 0 {
                "some repairs were refused: the audit Job's log names each document and why"
            } else {
                "set spec.audit.repair: true, or run `indexer audit --repair`"
            };
            verdict(
                Some(false),
                DIVERGENCE_FOUND,
                format!(
                    "the audit that ended {at} found {found} of {documents} documents divergent \
                     ({}), {} not repaired: {fix}",
                    listed(&a.found),
                    found - repaired
                ),
            )
        }
        "Unsettled" => verdict(
            None,
            "AuditUnsettled",
            format!(
                "the audit that ended {at} left nothing divergent, but {}: changes in flight may \
                 have been counted",
                a.message
            ),
        ),
        _ => verdict(
            None,
            "AuditFailed",
            format!("the audit that ended {at} failed: {}", a.message),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(suspend: bool) -> AuditSpec {
        AuditSpec {
            schedule: "17 3 * * *".into(),
            time_zone: None,
            repair: false,
            suspend,
        }
    }

    fn last(outcome: &str, found: DriftCounts, repaired: DriftCounts) -> AuditStatus {
        AuditStatus {
            start_time: "2026-12-03T03:17:00Z".into(),
            completion_time: "2026-12-03T03:17:09Z".into(),
            outcome: outcome.into(),
            mongodb_documents: 100,
            index_documents: 100,
            found,
            repaired,
            message: "the indexer group had not caught up when a re-check ran".into(),
        }
    }

    /// (name, spec, last audit, status, reason, words the message has)
    type Case = (
        &'static str,
        Option<AuditSpec>,
        Option<AuditStatus>,
        Option<bool>,
        &'static str,
        &'static [&'static str],
    );

    #[test]
    fn in_sync_follows_the_last_audit_and_names_the_counts_and_the_fix() {
        let none = DriftCounts::default();
        let two = DriftCounts {
            missing: 1,
            orphan: 1,
            ..none
        };
        let one = DriftCounts { missing: 1, ..none };
        let cases: [Case; 9] = [
            (
                "never",
                None,
                None,
                None,
                "NoAudit",
                &["spec.audit.schedule"],
            ),
            (
                "scheduled",
                Some(spec(false)),
                None,
                None,
                "AuditPending",
                &["17 3 * * *"],
            ),
            (
                "suspended",
                Some(spec(true)),
                None,
                None,
                "AuditSuspended",
                &["suspend"],
            ),
            (
                "equal",
                Some(spec(false)),
                Some(last("InSync", none, none)),
                Some(true),
                "InSync",
                &["100 documents"],
            ),
            (
                "repaired",
                Some(spec(false)),
                Some(last("Repaired", two, two)),
                Some(true),
                "Repaired",
                &["repaired 2", "missing 1, orphan 1"],
            ),
            (
                "found",
                Some(spec(false)),
                Some(last("Diverged", two, none)),
                Some(false),
                DIVERGENCE_FOUND,
                &[
                    "found 2 of 100",
                    "missing 1, orphan 1",
                    "2 not repaired",
                    "spec.audit.repair: true",
                ],
            ),
            (
                "refused",
                Some(spec(false)),
                Some(last("Diverged", two, one)),
                Some(false),
                DIVERGENCE_FOUND,
                &["1 not repaired", "refused"],
            ),
            (
                "unsettled",
                Some(spec(false)),
                Some(last("Unsettled", none, none)),
                None,
                "AuditUnsettled",
                &["had not caught up", "in flight"],
            ),
            // The schedule removed: the last audit still says what it found.
            (
                "unscheduled",
                None,
                Some(last("Failed", none, none)),
                None,
                "AuditFailed",
                &["failed"],
            ),
        ];
        for (name, spec, last, status, reason, words) in cases {
            let v = in_sync(spec.as_ref(), last.as_ref());
            assert_eq!((v.status, v.reason), (status, reason), "{name}");
            for w in words {
                assert!(
                    v.message.contains(w),
                    "{name}: {w:?} not in {:?}",
                    v.message
                );
            }
        }
    }

    #[test]
    fn the_status_says_what_the_summary_says() {
        let summary = AuditSummary {
            start_time: "a".into(),
            completion_time: "b".into(),
            outcome: AuditOutcome::Repaired,
            mongodb_documents: 7,
            index_documents: 8,
            found: lease::DriftCounts {
                stale: 2,
                resurrected: 1,
                ..lease::DriftCounts::default()
            },
            repaired: lease::DriftCounts {
                stale: 2,
                resurrected: 1,
                ..lease::DriftCounts::default()
            },
            message: String::new(),
        };
        let s = status_of(&summary);
        assert_eq!(s.outcome, "Repaired");
        assert_eq!((s.mongodb_documents, s.index_documents), (7, 8));
        assert_eq!(
            classes(&s.found),
            summary.found.classes(),
            "the same classes in the same order"
        );
        assert_eq!(s.repaired, s.found);
    }
}

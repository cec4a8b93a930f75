//! Rebuilds driven by `spec.elasticsearch.indexGeneration`: what the operator does about the
//! index behind the alias, decided purely from what it observed (table-tested), and done by
//! [`crate::controller`].
//!
//! Raising the generation above the alias's current one starts a rebuild: the operator creates
//! `<alias>-00000N` from the template with the staging alias, then the Job `<pipeline>-rebuild-N`
//! (`indexer rebuild --operator-swaps`) fills it from MongoDB and the topic. When the Job's Lease
//! says `AwaitingSwap`, the operator moves the alias in one `_aliases` request; the Job then
//! applies the last events and ends. After the Job succeeds, the previous indices are deleted if
//! `previousIndexPolicy: Delete`. A failed Job leaves the old index serving (deleting the Job
//! tries again); a generation below the current one is refused with a reason. The status says
//! all of it: `status.index` and the `Rebuilding` condition.

use k8s_openapi::api::batch::v1::Job;
use messagepipeline_crd::{IndexStatus, RebuildStatus};
use pipeline_contract::lease::RebuildProgress;
use pipeline_contract::search::IndexLayout;

/// The Job of the wanted generation, as its status says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobState {
    Active,
    Succeeded,
    Failed(String),
}

impl JobState {
    /// What a Job's status says: succeeded once a pod succeeded, failed once the Job has the
    /// `Failed` condition (its backoff limit reached), else still active.
    pub fn of(job: &Job) -> Self {
        let status = job.status.as_ref();
        if status.and_then(|s| s.succeeded).unwrap_or(0) > 0 {
            return Self::Succeeded;
        }
        let failed = status.and_then(|s| s.conditions.as_ref()).and_then(|cs| {
            cs.iter()
                .find(|c| c.type_ == "Failed" && c.status == "True")
        });
        match failed {
            Some(c) => Self::Failed(
                c.message
                    .clone()
                    .or_else(|| c.reason.clone())
                    .unwrap_or_else(|| "the Job failed".into()),
            ),
            None => Self::Active,
        }
    }
}

/// What the operator is to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Create the generation with its staging alias, then the Job.
    Start,
    /// Move the alias to the new generation off these indices.
    Swap { old: Vec<String> },
    /// Delete these previous indices (the policy says so).
    DeletePrevious(Vec<String>),
}

/// The `Rebuilding` condition: status (`Some(true)` while a rebuild runs), reason, message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub running: Option<bool>,
    pub reason: String,
    pub message: String,
}

/// What the operator observed.
#[derive(Debug, Clone)]
pub struct Observed<'a> {
    pub layout: &'a IndexLayout,
    /// `spec.elasticsearch.indexGeneration`, 1 when unset.
    pub wanted: u32,
    /// The indices the alias points at (none when there is no alias).
    pub alias: &'a [String],
    /// The Job of `wanted`, when there is one.
    pub job: Option<JobState>,
    /// The progress on that Job's Lease.
    pub progress: Option<&'a RebuildProgress>,
    /// The rebuild the stored status describes.
    pub stored: Option<&'a RebuildStatus>,
    pub delete_previous: bool,
    /// Indices behind the alias whose mappings differ from the installed template's.
    pub outdated: &'a [String],
    /// The generation the stored status says the alias had: with no alias now, the index was
    /// lost (and is not made again empty).
    pub known: Option<u32>,
    /// RFC 3339.
    pub now: &'a str,
}

/// What to do, and the status that says so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub steps: Vec<Step>,
    pub index: IndexStatus,
    pub verdict: Verdict,
}

fn verdict(running: Option<bool>, reason: &str, message: String) -> Verdict {
    Verdict {
        running,
        reason: reason.to_owned(),
        message,
    }
}

/// What every branch of the decision needs to know.
struct Facts {
    /// The alias's generation (0: no alias).
    current: u32,
    /// `<alias>-00000N` of the wanted generation.
    new_index: String,
    /// The alias's indices other than the new one.
    others: Vec<String>,
    /// The stored rebuild, when it is of the wanted generation.
    same: Option<RebuildStatus>,
    /// "generation N", for messages.
    name: String,
}

pub fn decide(o: &Observed<'_>) -> Decision {
    let on_alias = o
        .alias
        .iter()
        .filter_map(|i| o.layout.generation_of(i))
        .max()
        .unwrap_or(0);
    let lost = o.alias.is_empty() && o.known.is_some_and(|g| g > 0);
    let current = if lost { o.known.unwrap_or(0) } else { on_alias };
    let new_index = o.layout.index_of(o.wanted);
    let facts = Facts {
        current,
        others: o
            .alias
            .iter()
            .filter(|i| **i != new_index)
            .cloned()
            .collect(),
        new_index,
        same: o.stored.filter(|r| r.generation == o.wanted).cloned(),
        name: format!("generation {}", o.wanted),
    };
    let mut steps = Vec::new();
    let (rebuild, verdict) = match &o.job {
        None if o.wanted < current => (o.stored.cloned(), not_newer(o, &facts)),
        None if o.wanted > current && !(current == 0 && o.wanted == 1) => {
            steps.push(Step::Start);
            start(o, &facts)
        }
        None if lost => (o.stored.cloned(), index_lost(o, &facts)),
        None if !o.outdated.is_empty() => (o.stored.cloned(), outdated(o, &facts)),
        None => (o.stored.cloned(), idle(&facts)),
        Some(JobState::Active) => active(o, &facts, &mut steps),
        Some(JobState::Succeeded) => succeeded(o, &facts, &mut steps),
        Some(JobState::Failed(why)) => failed(o, &facts, why),
    };
    Decision {
        steps,
        index: IndexStatus {
            generation: (current > 0).then_some(current),
            indices: o.alias.to_vec(),
            rebuild,
        },
        verdict,
    }
}

fn not_newer(o: &Observed<'_>, f: &Facts) -> Verdict {
    let message = format!(
        "spec.elasticsearch.indexGeneration {} is below the alias's current generation {}: \
         nothing is rebuilt; set {} or more to rebuild",
        o.wanted,
        f.current,
        f.current + 1
    );
    verdict(Some(false), "GenerationNotNewer", message)
}

fn start(o: &Observed<'_>, f: &Facts) -> (Option<RebuildStatus>, Verdict) {
    let r = RebuildStatus {
        generation: o.wanted,
        phase: "Pending".into(),
        start_time: Some(o.now.to_owned()),
        previous: f.others.clone(),
        ..RebuildStatus::default()
    };
    let message = if f.others.is_empty() {
        format!(
            "building {} from MongoDB; the alias points at no index until the swap",
            f.name
        )
    } else {
        format!(
            "building {} from MongoDB; searches answer from {} until the swap",
            f.name,
            f.others.join(", ")
        )
    };
    (Some(r), verdict(Some(true), "RebuildStarted", message))
}

/// The reason of a `Rebuilding` condition that says the index needs a rebuild.
pub const MAPPING_OUTDATED: &str = "IndexMappingOutdated";

fn outdated(o: &Observed<'_>, f: &Facts) -> Verdict {
    let message = format!(
        "{} was created from an older index template (its mappings differ from the installed \
         one's): raise spec.elasticsearch.indexGeneration to {} to rebuild it with the current \
         mappings",
        o.outdated.join(", "),
        f.current + 1
    );
    verdict(Some(false), MAPPING_OUTDATED, message)
}

/// The reason of a `Rebuilding` condition that says the index behind the alias is gone.
pub const INDEX_LOST: &str = "IndexLost";

fn index_lost(o: &Observed<'_>, f: &Facts) -> Verdict {
    let message = format!(
        "the alias {} points at no index (it pointed at generation {}): searches fail and the \
         indexers wait; raise spec.elasticsearch.indexGeneration to {} to rebuild the index from \
         MongoDB",
        o.layout.alias(),
        f.current,
        f.current + 1
    );
    verdict(Some(false), INDEX_LOST, message)
}

fn idle(f: &Facts) -> Verdict {
    match &f.same {
        Some(r) if r.phase == "Done" => verdict(Some(false), "RebuildComplete", r.message.clone()),
        _ => verdict(
            Some(false),
            "NoRebuild",
            format!(
                "the index is generation {}; raise spec.elasticsearch.indexGeneration to \
                 rebuild it from MongoDB",
                f.current
            ),
        ),
    }
}

/// The stored rebuild of this generation, or a new one.
fn this_rebuild(o: &Observed<'_>, f: &Facts) -> RebuildStatus {
    f.same.clone().unwrap_or_else(|| RebuildStatus {
        generation: o.wanted,
        start_time: Some(o.now.to_owned()),
        previous: f.others.clone(),
        ..RebuildStatus::default()
    })
}

fn active(o: &Observed<'_>, f: &Facts, steps: &mut Vec<Step>) -> (Option<RebuildStatus>, Verdict) {
    let mut r = this_rebuild(o, f);
    match o.progress.filter(|p| p.generation == o.wanted) {
        Some(p) => {
            r.phase.clone_from(&p.phase);
            (r.documents_done, r.documents_total) = (p.done, p.total);
        }
        None if r.phase.is_empty() => r.phase = "Pending".into(),
        None => {}
    }
    if r.phase == "AwaitingSwap" && o.alias != std::slice::from_ref(&f.new_index) {
        steps.push(Step::Swap {
            old: f.others.clone(),
        });
    }
    r.message = format!(
        "{}: {} of about {} MongoDB documents written",
        f.name, r.documents_done, r.documents_total
    );
    let v = verdict(Some(true), &r.phase, r.message.clone());
    (Some(r), v)
}

fn succeeded(
    o: &Observed<'_>,
    f: &Facts,
    steps: &mut Vec<Step>,
) -> (Option<RebuildStatus>, Verdict) {
    let mut r = this_rebuild(o, f);
    r.phase = "Done".into();
    r.completion_time.get_or_insert_with(|| o.now.to_owned());
    r.documents_done = r.documents_done.max(r.documents_total);
    let old: Vec<String> = r
        .previous
        .iter()
        .filter(|i| **i != f.new_index)
        .cloned()
        .collect();
    let kept = if old.is_empty() {
        String::new()
    } else if o.delete_previous {
        steps.push(Step::DeletePrevious(old.clone()));
        r.previous.clear();
        format!("; {} deleted", old.join(", "))
    } else {
        format!("; {} kept", old.join(", "))
    };
    r.message = format!(
        "{} built from MongoDB ({} documents); the alias points at {}{kept}",
        f.name, r.documents_done, f.new_index
    );
    let v = verdict(Some(false), "RebuildComplete", r.message.clone());
    (Some(r), v)
}

fn failed(o: &Observed<'_>, f: &Facts, why: &str) -> (Option<RebuildStatus>, Verdict) {
    let mut r = this_rebuild(o, f);
    r.phase = "Failed".into();
    r.completion_time.get_or_insert_with(|| o.now.to_owned());
    r.message = format!(
        "{} failed: {why}; the alias still points at {}; delete the Job to try again",
        f.name,
        o.alias.join(", ")
    );
    let v = verdict(Some(false), "RebuildFailed", r.message.clone());
    (Some(r), v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> IndexLayout {
        IndexLayout::new("m").unwrap()
    }

    fn observed<'a>(
        layout: &'a IndexLayout,
        wanted: u32,
        alias: &'a [String],
        job: Option<JobState>,
        progress: Option<&'a RebuildProgress>,
        stored: Option<&'a RebuildStatus>,
    ) -> Observed<'a> {
        Observed {
            layout,
            wanted,
            alias,
            job,
            progress,
            stored,
            delete_previous: false,
            outdated: &[],
            known: alias.iter().filter_map(|i| layout.generation_of(i)).max(),
            now: "2026-12-03T10:00:00Z",
        }
    }

    #[test]
    fn a_lost_index_is_said_with_its_fix_and_the_next_generation_rebuilds_it() {
        let l = layout();
        let mut o = observed(&l, 1, &[], None, None, None);
        o.known = Some(1);
        let d = decide(&o);
        assert_eq!(d.steps, []);
        assert_eq!(
            (d.verdict.running, d.verdict.reason.as_str()),
            (Some(false), INDEX_LOST)
        );
        assert!(d.verdict.message.contains("to 2"), "{}", d.verdict.message);
        assert_eq!(d.index.generation, Some(1), "the generation it had is kept");
        o.wanted = 2;
        let d = decide(&o);
        assert_eq!(d.steps, [Step::Start]);
        assert_eq!(d.index.rebuild.unwrap().previous, Vec::<String>::new());
        // A pipeline that never had an index: nothing lost, the installer makes the first.
        o.known = None;
        o.wanted = 1;
        assert_eq!(decide(&o).verdict.reason, "NoRebuild");
    }

    #[test]
    fn the_generation_the_spec_asks_for_drives_each_step() {
        let l = layout();
        let gen1 = vec!["m-000001".to_owned()];
        let gen2 = vec!["m-000002".to_owned()];
        let both = vec!["m-000001".to_owned(), "m-000002".to_owned()];
        let progress = |phase: &str| RebuildProgress {
            generation: 2,
            phase: phase.into(),
            done: 10,
            total: 20,
        };
        let (scanning, awaiting) = (progress("Scanning"), progress("AwaitingSwap"));
        let started = RebuildStatus {
            generation: 2,
            phase: "Pending".into(),
            previous: gen1.clone(),
            ..RebuildStatus::default()
        };
        // (observed, steps, running, reason)
        let rows: Vec<(Observed<'_>, Vec<Step>, Option<bool>, &str)> = vec![
            (
                observed(&l, 1, &gen1, None, None, None),
                vec![],
                Some(false),
                "NoRebuild",
            ),
            (
                observed(&l, 1, &[], None, None, None),
                vec![],
                Some(false),
                "NoRebuild",
            ),
            (
                observed(&l, 2, &gen1, None, None, None),
                vec![Step::Start],
                Some(true),
                "RebuildStarted",
            ),
            (
                observed(&l, 2, &[], None, None, None),
                vec![Step::Start],
                Some(true),
                "RebuildStarted",
            ),
            (
                observed(&l, 2, &gen1, Some(JobState::Active), None, Some(&started)),
                vec![],
                Some(true),
                "Pending",
            ),
            (
                observed(
                    &l,
                    2,
                    &gen1,
                    Some(JobState::Active),
                    Some(&scanning),
                    Some(&started),
                ),
                vec![],
                Some(true),
                "Scanning",
            ),
            (
                observed(
                    &l,
                    2,
                    &gen1,
                    Some(JobState::Active),
                    Some(&awaiting),
                    Some(&started),
                ),
                vec![Step::Swap { old: gen1.clone() }],
                Some(true),
                "AwaitingSwap",
            ),
            // Swapped already (the Lease may lag): no second swap.
            (
                observed(
                    &l,
                    2,
                    &gen2,
                    Some(JobState::Active),
                    Some(&awaiting),
                    Some(&started),
                ),
                vec![],
                Some(true),
                "AwaitingSwap",
            ),
            // An alias on both (a swap half seen): the swap moves it off the old one.
            (
                observed(
                    &l,
                    2,
                    &both,
                    Some(JobState::Active),
                    Some(&awaiting),
                    Some(&started),
                ),
                vec![Step::Swap { old: gen1.clone() }],
                Some(true),
                "AwaitingSwap",
            ),
            (
                observed(
                    &l,
                    2,
                    &gen2,
                    Some(JobState::Succeeded),
                    None,
                    Some(&started),
                ),
                vec![],
                Some(false),
                "RebuildComplete",
            ),
            (
                observed(
                    &l,
                    2,
                    &gen1,
                    Some(JobState::Failed("BackoffLimitExceeded".into())),
                    None,
                    Some(&started),
                ),
                vec![],
                Some(false),
                "RebuildFailed",
            ),
            (
                observed(&l, 1, &gen2, None, None, Some(&started)),
                vec![],
                Some(false),
                "GenerationNotNewer",
            ),
            // A progress line of another generation says nothing about this one.
            (
                observed(&l, 3, &gen2, Some(JobState::Active), Some(&awaiting), None),
                vec![],
                Some(true),
                "Pending",
            ),
        ];
        for (o, steps, running, reason) in rows {
            let d = decide(&o);
            assert_eq!(
                (&d.steps, d.verdict.running, d.verdict.reason.as_str()),
                (&steps, running, reason),
                "wanted {}, alias {:?}, job {:?}, progress {:?}",
                o.wanted,
                o.alias,
                o.job,
                o.progress.map(|p| &p.phase)
            );
        }
    }

    #[test]
    fn a_job_is_active_until_it_succeeded_or_failed_for_good() {
        use k8s_openapi::api::batch::v1::{JobCondition, JobStatus};
        let job = |succeeded: Option<i32>, conditions: Vec<JobCondition>| Job {
            status: Some(JobStatus {
                succeeded,
                conditions: Some(conditions),
                ..JobStatus::default()
            }),
            ..Job::default()
        };
        let failed = |status: &str| JobCondition {
            type_: "Failed".into(),
            status: status.into(),
            reason: Some("BackoffLimitExceeded".into()),
            message: Some("Job has reached the specified backoff limit".into()),
            ..JobCondition::default()
        };
        assert_eq!(JobState::of(&Job::default()), JobState::Active);
        assert_eq!(JobState::of(&job(None, vec![])), JobState::Active);
        assert_eq!(JobState::of(&job(Some(1), vec![])), JobState::Succeeded);
        assert_eq!(
            JobState::of(&job(None, vec![failed("False")])),
            JobState::Active
        );
        assert_eq!(
            JobState::of(&job(None, vec![failed("True")])),
            JobState::Failed("Job has reached the specified backoff limit".into())
        );
    }

    #[test]
    fn the_status_says_where_the_rebuild_is_and_what_became_of_the_old_index() {
        let l = layout();
        let gen1 = vec!["m-000001".to_owned()];
        let gen2 = vec!["m-000002".to_owned()];
        let start = decide(&observed(&l, 2, &gen1, None, None, None));
        let r = start.index.rebuild.clone().unwrap();
        assert_eq!((r.generation, r.phase.as_str()), (2, "Pending"));
        assert_eq!(r.previous, gen1);
        assert_eq!(start.index.generation, Some(1));
        assert!(
            start.verdict.message.contains("m-000001"),
            "{}",
            start.verdict.message
        );

        let p = RebuildProgress {
            generation: 2,
            phase: "Scanning".into(),
            done: 5,
            total: 9,
        };
        let running = decide(&observed(
            &l,
            2,
            &gen1,
            Some(JobState::Active),
            Some(&p),
            Some(&r),
        ));
        let rr = running.index.rebuild.clone().unwrap();
        assert_eq!((rr.documents_done, rr.documents_total), (5, 9));
        assert_eq!(rr.start_time, r.start_time, "the start time stays");

        let mut o = observed(&l, 2, &gen2, Some(JobState::Succeeded), None, Some(&rr));
        let kept = decide(&o);
        assert!(
            kept.verdict.message.ends_with("m-000001 kept"),
            "{}",
            kept.verdict.message
        );
        assert!(
            kept.index
                .rebuild
                .as_ref()
                .unwrap()
                .completion_time
                .is_some()
        );
        o.delete_previous = true;
        let deleted = decide(&o);
        assert_eq!(deleted.steps, [Step::DeletePrevious(gen1.clone())]);
        assert!(deleted.index.rebuild.as_ref().unwrap().previous.is_empty());
        // Once deleted, the next reconcile deletes nothing more.
        let after = decide(&observed(
            &l,
            2,
            &gen2,
            Some(JobState::Succeeded),
            None,
            deleted.index.rebuild.as_ref(),
        ));
        assert!(after.steps.is_empty());
        // The Job gone (TTL or by hand), the completed rebuild is still what the status says.
        let gone = decide(&observed(
            &l,
            2,
            &gen2,
            None,
            None,
            deleted.index.rebuild.as_ref(),
        ));
        assert_eq!(gone.verdict.reason, "RebuildComplete");
        assert_eq!(gone.index.generation, Some(2));

        let mut o = observed(&l, 2, &gen2, None, None, None);
        o.outdated = &gen2;
        let old = decide(&o);
        assert_eq!(old.verdict.reason, MAPPING_OUTDATED);
        assert!(
            old.verdict.message.contains("indexGeneration to 3"),
            "{}",
            old.verdict.message
        );
        assert!(old.steps.is_empty(), "the fix is the user's to ask for");

        let refused = decide(&observed(&l, 1, &gen2, None, None, None));
        assert!(
            refused.verdict.message.contains("set 3 or more"),
            "{}",
            refused.verdict.message
        );
        let failed = decide(&observed(
            &l,
            2,
            &gen1,
            Some(JobState::Failed("x".into())),
            None,
            Some(&r),
        ));
        assert!(failed.verdict.message.contains("still points at m-000001"));
    }
}

//! What one bulk answer means for the lane that sent it: what becomes of each item it carried,
//! what the breaker is told, and how long the lane waits before its next request.
//!
//! Pure: [`judge`] takes the request's outcome, the per-item results and the attempts each item
//! had made before, and returns a [`Verdict`]; the lane applies it (moves items, writes dead
//! letters, sleeps). Built on [`crate::classify`]: `classify_request` for the request as a whole,
//! `partition` for the items of a 2xx answer.

use pipeline_contract::dlq::ErrorClass;

use crate::breaker::Event;
use crate::classify::{
    BreakerFailure, FailureKind, ItemResult, Partitioned, RequestDecision, RequestOutcome,
    classify_request, partition,
};

/// What becomes of the items of the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// 413 for several items: they go again, in requests of at most `chunk` (half this one).
    Split { chunk: usize },
    /// 413 for one item: it can never be accepted; to the DLQ with this reason.
    DeadLetterAll { class: ErrorClass, message: String },
    /// The request failed as a whole: every item stays pending as it was (no attempt counted).
    Keep,
    /// The engine answered each item: each counts one more attempt and goes where its answer
    /// says (indices into the items sent).
    Sorted(Partitioned<usize>),
}

/// The whole decision for one bulk answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub next: Next,
    /// What the breaker learns; `None` when the answer says nothing about the engine's health
    /// (a 413 is about the request's size).
    pub breaker: Option<Event>,
    /// The failure counted against the breaker, for the log and the failure metric.
    pub failure: Option<BreakerFailure>,
    /// Wait before the lane's next request: the attempt number for the retry policy's delay.
    pub backoff: Option<u32>,
}

impl Verdict {
    fn failed(next: Next, failure: BreakerFailure) -> Self {
        Self {
            next,
            breaker: Some(Event::Failed {
                reason: failure.to_string(),
            }),
            failure: Some(failure),
            // A failure of the engine: back off as after a first attempt, then try again (the
            // breaker decides whether the lane may).
            backoff: Some(1),
        }
    }

    fn at_once(next: Next) -> Self {
        Self {
            next,
            breaker: None,
            failure: None,
            backoff: None,
        }
    }
}

/// Decides what the answer to one bulk request means. `attempts[i]` is how many attempts the
/// `i`-th item sent had made before this one; `max_attempts` bounds them (attempts in total).
pub fn judge(
    outcome: &RequestOutcome,
    results: Vec<ItemResult>,
    attempts: &[u32],
    max_attempts: u32,
) -> Verdict {
    match classify_request(outcome, attempts.len()) {
        RequestDecision::Split => Verdict::at_once(Next::Split {
            chunk: (attempts.len() / 2).max(1),
        }),
        RequestDecision::DeadLetter { class, message } => {
            Verdict::at_once(Next::DeadLetterAll { class, message })
        }
        RequestDecision::BreakerFailure(failure) => Verdict::failed(Next::Keep, failure),
        // An answer that does not match the request cannot be trusted item by item.
        RequestDecision::InspectItems if results.len() != attempts.len() => {
            let failure = BreakerFailure {
                kind: FailureKind::UnexpectedResponse,
                message: format!(
                    "bulk answered {} items for {} sent",
                    results.len(),
                    attempts.len()
                ),
            };
            Verdict::failed(Next::Keep, failure)
        }
        RequestDecision::InspectItems => {
            let answered = results
                .into_iter()
                .zip(attempts)
                .enumerate()
                .map(|(i, (result, before))| (i, before + 1, result));
            let sorted = partition(answered, max_attempts);
            if let Some(failure) = sorted.breaker_failure().cloned() {
                return Verdict::failed(Next::Sorted(sorted), failure);
            }
            // The engine is healthy; what is retried waits as long as its most tried item asks.
            let backoff = sorted.retry.iter().map(|&i| attempts[i] + 1).max();
            Verdict {
                next: Next::Sorted(sorted),
                breaker: Some(Event::Succeeded),
                failure: None,
                backoff,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::DeadLetter;

    const MAX: u32 = 3;

    fn ok() -> ItemResult {
        ItemResult::ok(201)
    }
    fn item(status: u16, error_type: &str, reason: &str) -> ItemResult {
        ItemResult::error(status, error_type, reason)
    }
    fn response(status: u16, error_type: Option<&str>) -> RequestOutcome {
        RequestOutcome::Response {
            status,
            error_type: error_type.map(str::to_owned),
            reason: None,
        }
    }
    fn sorted(
        done: &[usize],
        newer: usize,
        retry: &[usize],
        dead: &[usize],
        wait: &[usize],
    ) -> Shape {
        Shape::Sorted {
            done: done.to_vec(),
            already_newer: newer,
            retry: retry.to_vec(),
            dead: dead.to_vec(),
            wait: wait.to_vec(),
        }
    }

    /// A verdict with the messages left out, so a row reads as columns.
    #[derive(Debug, PartialEq, Eq)]
    enum Shape {
        Split(usize),
        DeadLetterAll(ErrorClass),
        Keep,
        Sorted {
            done: Vec<usize>,
            already_newer: usize,
            retry: Vec<usize>,
            dead: Vec<usize>,
            wait: Vec<usize>,
        },
    }

    #[derive(Debug, PartialEq, Eq)]
    enum Told {
        Nothing,
        Succeeded,
        Failed(FailureKind),
    }

    fn shape(v: &Verdict) -> (Shape, Told, Option<u32>) {
        let next = match &v.next {
            Next::Split { chunk } => Shape::Split(*chunk),
            Next::DeadLetterAll { class, .. } => Shape::DeadLetterAll(*class),
            Next::Keep => Shape::Keep,
            Next::Sorted(p) => Shape::Sorted {
                done: p.done.clone(),
                already_newer: p.already_newer,
                retry: p.retry.clone(),
                dead: p.dead_letter.iter().map(|d| d.item).collect(),
                wait: p.breaker.iter().map(|(i, _)| *i).collect(),
            },
        };
        let told = match (&v.breaker, &v.failure) {
            (None, None) => Told::Nothing,
            (Some(Event::Succeeded), None) => Told::Succeeded,
            (Some(Event::Failed { reason }), Some(f)) => {
                assert_eq!(reason, &f.to_string(), "the breaker hears the failure");
                Told::Failed(f.kind)
            }
            other => panic!("breaker event and failure disagree: {other:?}"),
        };
        (next, told, v.backoff)
    }

    /// Name, outcome, item results, attempts before, what becomes of the items, what the breaker
    /// hears, backoff.
    type Row = (
        &'static str,
        RequestOutcome,
        Vec<ItemResult>,
        Vec<u32>,
        Shape,
        Told,
        Option<u32>,
    );

    /// One row per class of bulk outcome: the request as a whole, then the items of a 2xx.
    #[test]
    fn each_class_of_bulk_outcome_has_its_verdict() {
        use FailureKind as K;
        use Told::{Failed, Nothing, Succeeded};
        let transport = RequestOutcome::Transport {
            message: "connection refused".into(),
        };
        let conflict = || item(409, "version_conflict_engine_exception", "newer");
        let busy = || item(429, "es_rejected_execution_exception", "queue full");
        let mapping = || item(400, "mapper_parsing_exception", "bad field");
        let missing = || item(404, "index_not_found_exception", "no such index");
        #[rustfmt::skip]
        let rows: Vec<Row> = vec![
            ("all indexed", response(200, None), vec![ok(), ok()], vec![0, 0],
                sorted(&[0, 1], 0, &[], &[], &[]), Succeeded, None),
            ("already newer counts as done", response(200, None), vec![conflict(), ok()], vec![0, 2],
                sorted(&[0, 1], 1, &[], &[], &[]), Succeeded, None),
            ("a transient item is retried after the backoff of its attempt", response(200, None),
                vec![ok(), busy(), busy()], vec![0, 0, 1],
                sorted(&[0], 0, &[1, 2], &[], &[]), Succeeded, Some(2)),
            ("a transient item out of attempts is dead-lettered", response(200, None),
                vec![busy(), ok()], vec![MAX - 1, 0],
                sorted(&[1], 0, &[], &[0], &[]), Succeeded, None),
            ("a document the mapping refuses is dead-lettered", response(200, None),
                vec![mapping(), ok()], vec![0, 0],
                sorted(&[1], 0, &[], &[0], &[]), Succeeded, None),
            ("an item blocked by the index waits on the breaker", response(200, None),
                vec![ok(), missing(), busy()], vec![0, 0, 0],
                sorted(&[0], 0, &[2], &[], &[1]), Failed(K::IndexUnavailable), Some(1)),
            ("an answer of the wrong length is a failure", response(200, None), vec![ok()], vec![0, 0],
                Shape::Keep, Failed(K::UnexpectedResponse), Some(1)),
            ("413 for several items splits them", response(413, None), vec![], vec![0, 0, 0, 0, 0],
                Shape::Split(2), Nothing, None),
            ("413 for one item dead-letters it", response(413, None), vec![], vec![0],
                Shape::DeadLetterAll(ErrorClass::MappingRejected), Nothing, None),
            ("no connection", transport, vec![], vec![0],
                Shape::Keep, Failed(K::Transport), Some(1)),
            ("no answer in time", RequestOutcome::Timeout, vec![], vec![0],
                Shape::Keep, Failed(K::Timeout), Some(1)),
            ("credentials refused", response(401, None), vec![], vec![0],
                Shape::Keep, Failed(K::AuthRejected), Some(1)),
            ("a cluster block", response(403, Some("cluster_block_exception")), vec![], vec![0],
                Shape::Keep, Failed(K::ClusterBlock), Some(1)),
            ("the engine is overloaded", response(429, None), vec![], vec![0],
                Shape::Keep, Failed(K::Overloaded), Some(1)),
            ("the engine fails", response(503, None), vec![], vec![0],
                Shape::Keep, Failed(K::ServerError), Some(1)),
        ];
        for (name, outcome, results, attempts, next, told, backoff) in rows {
            let verdict = judge(&outcome, results, &attempts, MAX);
            assert_eq!(shape(&verdict), (next, told, backoff), "{name}");
        }
    }

    #[test]
    fn a_dead_letter_keeps_its_class_message_and_the_attempt_that_ended_it() {
        let verdict = judge(
            &response(200, None),
            vec![item(503, "unavailable_shards_exception", "primary down")],
            &[MAX - 1],
            MAX,
        );
        let Next::Sorted(p) = verdict.next else {
            panic!("items were answered: {verdict:?}");
        };
        let [
            DeadLetter {
                item,
                class,
                message,
                attempts,
            },
        ] = p.dead_letter.as_slice()
        else {
            panic!("one dead letter: {p:?}");
        };
        assert_eq!(
            (*item, *class, *attempts),
            (0, ErrorClass::RetriesExhausted, MAX)
        );
        assert!(message.contains("primary down"), "{message}");
    }
}
